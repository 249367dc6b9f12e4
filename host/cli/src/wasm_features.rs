//! `-W NAME[=y|n]`: the WebAssembly proposals an engine accepts, as wasmtime's CLI spells them;
//! and `-W max-memory-size=SIZE`, `-W timeout=DURATION`, `-W fuel=N`: the limits of a run, as
//! `wasmtime run -W` takes them. `-W help` lists them all.
//!
//! Without any `-W`, the engine enables what wasmtime enables by default (the same crate
//! features as `wasmtime run`, so the same defaults): a component that `wasmtime run` accepts,
//! `filecache run` accepts. Each `-W` switches one proposal on or off, after the defaults.

use anyhow::{Result, bail};
use filecache_host::size::parse_size;
use wasmtime::Config;

use crate::commands::plugin::parse_duration;
use crate::limits::Limits;

/// The limits `-W` takes: the name, its value, what it does.
const LIMITS: &[(&str, &str, &str)] = &[
    (
        "max-memory-size",
        "SIZE",
        "most bytes each linear memory may grow to (e.g. 64MiB); a component that asks for more is stopped",
    ),
    (
        "timeout",
        "DURATION",
        "wall time the component may run (e.g. 500ms, 10s, 5m), computing (stopped by epoch \
         interruption) or waiting in a WASI call such as a sleep or a read of stdin; then it is stopped",
    ),
    (
        "fuel",
        "N",
        "fuel the component may consume (about one unit per WebAssembly instruction); then it is stopped",
    ),
];

/// What `-W help` prints.
pub fn help() -> String {
    let mut out = String::from(
        "Options for -W (--wasm), as `wasmtime run -W` takes them; several may be given, separated by \
         commas (-W fuel=1000000,timeout=10s) or as several -W.\n\nLimits of each run (under `serve`, of \
         each request):\n",
    );
    for (name, value, what) in LIMITS {
        out += &format!("  -W {name}={value}\n        {what}\n");
    }
    out += "\nWebAssembly features, on (NAME or NAME=y) or off (NAME=n); the defaults are wasmtime's:\n";
    for (name, _) in SWITCHES {
        out += &format!("  -W {name}[=y|n]\n");
    }
    out
}

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

/// One `-W` item: a feature switch or a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WasmOption {
    Feature(Switch),
    MaxMemorySize(u64),
    Timeout(std::time::Duration),
    Fuel(u64),
}

/// Parses one `-W` value: `NAME`, `NAME=y|n` (also `yes|no|true|false`), a limit `NAME=VALUE`,
/// or several of them separated by commas, as wasmtime's CLI accepts. `help` prints what `-W`
/// takes and exits, as wasmtime's `-W help` does.
pub fn parse(value: &str) -> Result<Vec<WasmOption>> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|item| {
            if item == "help" || item == "help-long" {
                print!("{}", help());
                std::process::exit(0);
            }
            if let Some((name, v)) = item.split_once('=')
                && LIMITS.iter().any(|(n, _, _)| *n == name)
            {
                return parse_limit(name, v);
            }
            let (name, v) = item.split_once('=').map_or((item, None), |(n, v)| (n, Some(v)));
            if let Some((limit, value, _)) = LIMITS.iter().find(|(n, _, _)| *n == name) {
                bail!("-W {item}: give a value, -W {limit}={value}");
            }
            let Some((name, _)) = SWITCHES.iter().find(|(n, _)| *n == name) else {
                bail!("-W {name}: unknown option; `-W help` lists what -W takes");
            };
            let on = match v {
                None | Some("y" | "yes" | "true") => true,
                Some("n" | "no" | "false") => false,
                Some(_) => bail!("-W {item}: expected {name}=y or {name}=n"),
            };
            Ok(WasmOption::Feature(Switch { name, on }))
        })
        .collect()
}

fn parse_limit(name: &str, value: &str) -> Result<WasmOption> {
    let fail = |e: String| anyhow::anyhow!("-W {name}={value}: {e}");
    Ok(match name {
        "max-memory-size" => WasmOption::MaxMemorySize(parse_size(value).map_err(fail)?),
        "timeout" => WasmOption::Timeout(parse_duration(value).map_err(fail)?),
        "fuel" => match value.parse::<u64>() {
            Ok(0) => bail!("-W fuel=0: a run with no fuel stops before its first instruction; give at least 1"),
            Ok(n) => WasmOption::Fuel(n),
            Err(_) => bail!("-W fuel={value}: expected a whole number of fuel units, e.g. -W fuel=1000000"),
        },
        _ => unreachable!("a name from LIMITS"),
    })
}

/// The limits among `options` (the last of each wins).
pub fn limits(options: &[WasmOption]) -> Limits {
    let mut limits = Limits::default();
    for o in options {
        match *o {
            WasmOption::MaxMemorySize(n) => limits.max_memory_size = Some(n),
            WasmOption::Timeout(t) => limits.timeout = Some(t),
            WasmOption::Fuel(n) => limits.fuel = Some(n),
            WasmOption::Feature(_) => {}
        }
    }
    limits
}

/// Applies the switches, in order, to `config`, and turns on what the limits need (fuel
/// consumption, epoch interruption: both change the compiled code, so `compile -W` with the same
/// options warms what `run` loads).
pub fn apply(config: &mut Config, options: &[WasmOption]) {
    for o in options {
        if let WasmOption::Feature(s) = o
            && let Some((_, set)) = SWITCHES.iter().find(|(n, _)| *n == s.name)
        {
            set(config, s.on);
        }
    }
    let limits = limits(options);
    if limits.fuel.is_some() {
        config.consume_fuel(true);
    }
    if limits.timeout.is_some() {
        config.epoch_interruption(true);
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
                WasmOption::Feature(Switch {
                    name: "component-model-async",
                    on: true
                }),
                WasmOption::Feature(Switch {
                    name: "threads",
                    on: false
                }),
                WasmOption::Feature(Switch { name: "gc", on: true }),
            ]
        );
        let l = limits(&parse("max-memory-size=64MiB,timeout=10s,fuel=1000").unwrap());
        assert_eq!(l.max_memory_size, Some(64 << 20));
        assert_eq!(l.timeout, Some(std::time::Duration::from_secs(10)));
        assert_eq!(l.fuel, Some(1000));
    }

    #[test]
    fn refuses_unknown_names_and_values() {
        assert!(
            parse("no-such-thing=y")
                .unwrap_err()
                .to_string()
                .contains("`-W help` lists what -W takes")
        );
        assert!(
            parse("threads=maybe")
                .unwrap_err()
                .to_string()
                .contains("expected threads=y")
        );
        for (bad, says) in [
            ("fuel=0", "give at least 1"),
            ("fuel=lots", "expected a whole number"),
            ("timeout=10", "unknown unit"),
            ("max-memory-size=big", "invalid size"),
            ("timeout", "give a value, -W timeout=DURATION"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
