//! Puts `memory.x` on the linker search path (cortex-m-rt's `link.x` includes it), so the link
//! does not depend on the directory cargo happens to run rustc in, and relinks when it changes.

use std::env;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    println!("cargo:rustc-link-search={}", dir.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
}
