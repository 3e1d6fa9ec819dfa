//! Routing on the request path: route selection over a 100-route table, and resolution of a
//! logical name under a 20-rule dtab (cached, as for requests without overrides, and fresh, as for
//! requests with `l5d-dtab`). Target: under 1 µs per request.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use mesh_core::dtab::{bind, pick, DelegateLimits, Dtab, InetNamer, Path};
use mesh_core::route::{Backend, Route, RouteTable, RouterConfig, Routing, L5D_DTAB};

fn table() -> RouteTable {
    let mut routes = Vec::with_capacity(100);
    for i in 0..99 {
        routes.push(
            Route::builder(format!("r{i}"))
                .host(format!("svc-{i}.example.com"))
                .path_prefix(format!("/api/v{}/", i % 7))
                .header_present(if i % 3 == 0 { "x-canary" } else { "x-tenant" })
                .weighted(Backend::Name(format!("/svc/s{i}").parse().unwrap()), 90)
                .weighted(Backend::Name(format!("/svc/s{i}-v2").parse().unwrap()), 10)
                .build()
                .unwrap(),
        );
    }
    routes.push(
        Route::builder("default")
            .to(Backend::Host("/svc".parse().unwrap()))
            .build()
            .unwrap(),
    );
    RouteTable::new(routes).unwrap()
}

fn dtab() -> Dtab {
    let mut rules = vec![
        "/srv => /#/io.l5d.dns".to_owned(),
        "/srv/world => /$/inet/127.0.0.1/4000".to_owned(),
        "/srv/world-v2 => /$/inet/127.0.0.1/4001".to_owned(),
        "/host => /srv".to_owned(),
        "/svc => /host".to_owned(),
    ];
    for i in 0..13 {
        rules.push(format!("/host/other-{i} => /srv/other-{i} | /srv/fallback"));
    }
    rules.push("/host/world => 0.9 * /srv/world & 0.1 * /srv/world-v2".to_owned());
    rules.push("/k8s/*/http => /host".to_owned());
    Dtab::parse(&rules.join(";\n")).unwrap()
}

fn bench(c: &mut Criterion) {
    let table = table();
    let hit_last = Request::get("http://world/api/v1/x").body(()).unwrap();
    let mut hit_50 = Request::get("http://svc-50.example.com/api/v1/x")
        .body(())
        .unwrap();
    hit_50
        .headers_mut()
        .insert("x-tenant", "t".parse().unwrap());
    c.bench_function("route_select/100_routes/last", |b| {
        b.iter(|| black_box(table.select(black_box(&hit_last))).is_some())
    });
    c.bench_function("route_select/100_routes/middle", |b| {
        b.iter(|| black_box(table.select(black_box(&hit_50))).is_some())
    });

    // No exact hosts: every route is scanned in order (the slow case for first-match tables).
    let by_path = RouteTable::new(
        (0..100)
            .map(|i| {
                Route::builder(format!("p{i}"))
                    .path_prefix(format!("/p{i}/"))
                    .to(Backend::Name(format!("/svc/p{i}").parse().unwrap()))
                    .build()
                    .unwrap()
            })
            .collect(),
    )
    .unwrap();
    let p99 = Request::get("http://x/p99/y").body(()).unwrap();
    c.bench_function("route_select/100_path_routes/last", |b| {
        b.iter(|| black_box(by_path.select(black_box(&p99))).is_some())
    });

    let dtab = dtab();
    assert_eq!(dtab.len(), 20);
    let routing = Routing::new(table, dtab.clone(), InetNamer, RouterConfig::default()).unwrap();
    // The request is built once: without override headers `route` does not modify it.
    let mut req = Request::get("http://world/api/v1/x").body(()).unwrap();
    c.bench_function("route/100_routes_20_rule_dtab/cached", |b| {
        b.iter(|| black_box(routing.route(black_box(&mut req)).unwrap()))
    });

    let name: Path = "/svc/world".parse().unwrap();
    c.bench_function("dtab_resolve/20_rules/fresh", |b| {
        b.iter(|| {
            let tree = bind(
                &dtab,
                &InetNamer,
                black_box(&name),
                DelegateLimits::default(),
            )
            .unwrap();
            black_box(pick(&tree, 0.5).unwrap().id.len());
        })
    });

    let over = "/host/world => /srv/world-v2;";
    let trusting = Routing::new(
        self::table(),
        dtab.clone(),
        InetNamer,
        RouterConfig {
            overrides: mesh_core::route::OverrideTrust::Always,
            ..Default::default()
        },
    )
    .unwrap();
    c.bench_function("route/100_routes_20_rule_dtab/with_l5d_dtab", |b| {
        let over: http::HeaderValue = over.parse().unwrap();
        b.iter(|| {
            req.headers_mut().insert(L5D_DTAB, over.clone());
            req.headers_mut().remove(mesh_core::route::L5D_CTX_DTAB);
            black_box(trusting.route(&mut req).unwrap());
        })
    });

    let text = dtab.to_string();
    c.bench_function("dtab_parse/20_rules", |b| {
        b.iter(|| black_box(Dtab::parse(black_box(&text)).unwrap().len()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
