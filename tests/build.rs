//! Builds the guest components for `wasm32-wasip2`, as wasmtime's own test-programs crate does,
//! and exports their paths to `src/lib.rs` as `FILECACHE_WASM_<NAME>` environment variables.
//!
//! The guests are built by a nested cargo in a target directory of their own
//! (`target/wasm-guests`), so it never waits on the lock of the build that runs this script.

use std::path::PathBuf;
use std::process::Command;

/// (package, extra cargo arguments, binaries it produces)
const GUESTS: &[(&str, &[&str], &[&str])] = &[
    (
        "filecache-guest",
        &["--features", "demo http-example"],
        &["brotli-assets", "http-hello"],
    ),
    (
        "filecache-test-programs",
        &[],
        &[
            "contract",
            "hostile",
            "markdown",
            "bench",
            "keyvalue",
            "keyvalue-draft2",
            "http-keyvalue",
            "http-cache",
        ],
    ),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    let target_dir = root.join("target").join("wasm-guests");
    for watched in [
        "wit",
        "guest/src",
        "guest/Cargo.toml",
        "tests/programs/src",
        "tests/programs/Cargo.toml",
        "tests/programs/wit",
        // Compiled into the test programs.
        "host/store/src/size.rs",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for (package, extra, bins) in GUESTS {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--package", package])
            .args(*extra)
            .arg("--target-dir")
            .arg(&target_dir);
        for bin in *bins {
            cmd.args(["--bin", bin]);
        }
        // What the outer build sets for its own target must not leak into the guests' build
        // (clippy's driver, host rustflags, a coverage wrapper).
        for var in [
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTC_WRAPPER",
            "CLIPPY_ARGS",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_PRIMARY_PACKAGE",
        ] {
            cmd.env_remove(var);
        }
        let status = cmd.status().expect("cannot run cargo to build the guest components");
        if !status.success() {
            panic!(
                "building the guest package {package} for wasm32-wasip2 failed (see above). \
                 If the target is missing, install it with `rustup target add wasm32-wasip2`."
            );
        }
        for bin in *bins {
            let wasm = target_dir
                .join("wasm32-wasip2")
                .join("release")
                .join(format!("{bin}.wasm"));
            assert!(wasm.exists(), "{} was not built", wasm.display());
            let var = format!("FILECACHE_WASM_{}", bin.to_uppercase().replace('-', "_"));
            println!("cargo:rustc-env={var}={}", wasm.display());
        }
    }
}
