//! `-W NAME[=y|n]`: the WebAssembly proposals an engine accepts, as wasmtime's CLI spells them.
//!
//! Without any `-W`, the engine enables what wasmtime enables by default (the same crate
//! features as `wasmtime run`, so the same defaults): a component that `wasmtime run` accepts,
//! `filecache run` accepts. Each `-W` switches one proposal on or off, after the defaults.

use anyhow::{Result, bail};
use wasmtime::Config;

/// How a switch sets the engine's configuration.
type Set = fn(&mut Config, bool);

/// The switches `-W` knows: the name, and how it sets the engine's configuration.
const SWITCHES: &[(&str, Set)] = &[
    ("bulk-memory", |c, on| {
        c.wasm_bulk_memory(on);
    }),
    ("component-model", |c, on| {
        c.wasm_component_model(on);
    }),
    ("component-model-async", |c, on| {
        c.wasm_component_model_async(on);
    }),
    ("component-model-async-builtins", |c, on| {
        c.wasm_component_model_more_async_builtins(on);
    }),
    ("component-model-async-stackful", |c, on| {
        c.wasm_component_model_async_stackful(on);
    }),
    ("component-model-error-context", |c, on| {
        c.wasm_component_model_error_context(on);
    }),
    ("component-model-fixed-length-lists", |c, on| {
        c.wasm_component_model_fixed_length_lists(on);
    }),
    ("component-model-gc", |c, on| {
        c.wasm_component_model_gc(on);
    }),
    ("component-model-threading", |c, on| {
        c.wasm_component_model_threading(on);
    }),
    ("custom-page-sizes", |c, on| {
        c.wasm_custom_page_sizes(on);
    }),
    ("exceptions", |c, on| {
        c.wasm_exceptions(on);
    }),
    ("extended-const", |c, on| {
        c.wasm_extended_const(on);
    }),
    ("function-references", |c, on| {
        c.wasm_function_references(on);
    }),
    ("gc", |c, on| {
        c.wasm_gc(on);
    }),
    ("memory64", |c, on| {
        c.wasm_memory64(on);
    }),
    ("multi-memory", |c, on| {
        c.wasm_multi_memory(on);
    }),
    ("multi-value", |c, on| {
        c.wasm_multi_value(on);
    }),
    ("reference-types", |c, on| {
        c.wasm_reference_types(on);
    }),
    ("relaxed-simd", |c, on| {
        c.wasm_relaxed_simd(on);
    }),
    ("simd", |c, on| {
        c.wasm_simd(on);
    }),
    ("stack-switching", |c, on| {
        c.wasm_stack_switching(on);
    }),
    ("tail-call", |c, on| {
        c.wasm_tail_call(on);
    }),
    ("threads", |c, on| {
        c.wasm_threads(on);
    }),
    ("wide-arithmetic", |c, on| {
        c.wasm_wide_arithmetic(on);
    }),
];

/// One `-W` switch, checked: a known proposal, on or off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switch {
    name: &'static str,
    on: bool,
}

/// Parses one `-W` value: `NAME`, `NAME=y|n` (also `yes|no|true|false`), or several of them
/// separated by commas, as wasmtime's CLI accepts.
pub fn parse(value: &str) -> Result<Vec<Switch>> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (name, on) = match item.split_once('=') {
                None => (item, true),
                Some((name, v)) => match v {
                    "y" | "yes" | "true" => (name, true),
                    "n" | "no" | "false" => (name, false),
                    _ => bail!("-W {item}: expected {name}=y or {name}=n"),
                },
            };
            match SWITCHES.iter().find(|(n, _)| *n == name) {
                Some((name, _)) => Ok(Switch { name, on }),
                None => bail!(
                    "-W {name}: unknown WebAssembly feature; known: {}",
                    SWITCHES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ),
            }
        })
        .collect()
}

/// Applies the switches, in order, to `config`.
pub fn apply(config: &mut Config, switches: &[Switch]) {
    for s in switches {
        if let Some((_, set)) = SWITCHES.iter().find(|(n, _)| *n == s.name) {
            set(config, s.on);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wasmtime_spellings() {
        let s = parse("component-model-async=y,threads=n,gc").unwrap();
        assert_eq!(
            s,
            vec![
                Switch {
                    name: "component-model-async",
                    on: true
                },
                Switch {
                    name: "threads",
                    on: false
                },
                Switch { name: "gc", on: true },
            ]
        );
    }

    #[test]
    fn refuses_unknown_names_and_values() {
        assert!(
            parse("no-such-thing=y")
                .unwrap_err()
                .to_string()
                .contains("unknown WebAssembly feature")
        );
        assert!(
            parse("threads=maybe")
                .unwrap_err()
                .to_string()
                .contains("expected threads=y")
        );
    }
}
