//! Release builds of `vigil-proxy` place the functions a serving proxy runs together at the
//! start of its code (`link/hot.ld`, written by `bench/hot-functions.sh`). Once the proxy has
//! released its start-up pages (`src/residency.rs`), the code that stays resident is then a
//! few contiguous megabytes instead of pages scattered over all of it. The script adds an
//! output section before `.text` (`INSERT BEFORE`), which GNU ld and LLD both understand,
//! and leaves the rest of the default layout alone.
fn main() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if release && linux {
        println!(
            "cargo:rustc-link-arg-bin=vigil-proxy=-Wl,-T,{}",
            script.display()
        );
    }
}
