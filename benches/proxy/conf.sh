# Configuration writers shared by run.sh and ab.sh, so that both set HAProxy, nginx and
# mesh-proxy up the same way. Each writes into "$RUN", which the caller sets.

nginx_conf() { # name listen body
    cat > "$RUN/$1.conf" <<EOF
worker_processes 1; daemon off; master_process off; pid $RUN/$1.pid;
error_log $RUN/$1-error.log warn;
events { worker_connections 4096; }
http {
    access_log off; keepalive_requests 1000000; keepalive_timeout 65s;
    client_body_temp_path $RUN/$1-body; proxy_temp_path $RUN/$1-proxy;
    fastcgi_temp_path $RUN/$1-fcgi; uwsgi_temp_path $RUN/$1-uwsgi; scgi_temp_path $RUN/$1-scgi;
    $3
    server { listen 127.0.0.1:$2 backlog=4096; location / { $4 } }
}
EOF
}

haproxy_conf() { # listen backend: writes $RUN/haproxy.cfg (one thread, connection reuse)
    cat > "$RUN/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8192
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:$1
    default_backend be
backend be
    server b1 127.0.0.1:$2 maxconn 4096
EOF
}

mesh_conf() { # name outbound inbound admin target-service-endpoint identity tls(client|server|"")
    {
        echo "[outbound]"; echo "listen = \"127.0.0.1:$2\""; echo "dtab = \"/svc => /srv;\""
        [ -n "$3" ] && { echo "[inbound]"; echo "listen = \"127.0.0.1:$3\""; echo "app = \"127.0.0.1:18080\""; }
        echo "[admin]"; echo "listen = \"127.0.0.1:$4\""
        if [ -n "$7" ]; then
            echo "[tls]"; echo "chain = \"$RUN/certs/$7.pem\""; echo "key = \"$RUN/certs/$7.key\""
            echo "trust_bundle = \"$RUN/certs/ca.pem\""
        fi
        echo "[[service]]"; echo "name = \"/srv/backend\""; echo "endpoints = [\"127.0.0.1:$5\"]"
        [ -n "$6" ] && echo "identity = \"$6\""
        echo "[[route]]"; echo "name = \"all\""; echo "backend = \"/svc/backend\""
    } > "$RUN/$1.toml"
}
