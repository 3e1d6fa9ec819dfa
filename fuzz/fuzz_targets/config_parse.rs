//! Fuzzes the configuration loader (`meshwork::config::Config::parse`, the TOML file of the proxy):
//! arbitrary text never panics, and an error names the file and a line and column inside the
//! text (1-based), as an editor would need to jump to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwork::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse("fuzz.toml", text) {
        Ok(config) => {
            // A valid config also shows itself (as /config on the admin port does) without panicking.
            let _ = config.redacted_json();
            let _ = config.route_table();
        }
        Err(e) => {
            assert_eq!(e.file, "fuzz.toml");
            let lines = text.split('\n').count();
            assert!(
                e.line >= 1 && e.line <= lines.max(1),
                "line {} of {lines}: {e}",
                e.line
            );
            assert!(e.column >= 1, "{e}");
        }
    }
});
