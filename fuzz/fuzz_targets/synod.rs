//! Every target of `synod-fuzz` in one libFuzzer binary; `SYNOD_FUZZ_TARGET`
//! names the one to run.
#![no_main]

use std::sync::OnceLock;

static TARGET: OnceLock<&'static synod_fuzz::Target> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = TARGET.get_or_init(|| {
        let name = std::env::var("SYNOD_FUZZ_TARGET").unwrap_or_default();
        synod_fuzz::target(&name).unwrap_or_else(|| panic!("SYNOD_FUZZ_TARGET={name:?} names no target"))
    });
    (target.run)(data);
});
