//! `brotli-assets`: pre-compresses a folder of web assets with Brotli, memoized through the cache.
//!
//! ```text
//! brotli-assets [--quality Q] [--lgwin W] IN_DIR OUT_DIR
//! ```
//!
//! Walks `IN_DIR` recursively (in sorted order) and writes `OUT_DIR/<relative path>.br` for every
//! file, creating subfolders as needed. Each file's compressed bytes are memoized under a key made
//! of this plugin's name and version, the quality, the window size and the file's bytes (not its
//! path), so identical files share one entry. It prints one line per file and a summary:
//!
//! ```text
//! miss index.html            53286 ->     10412 B   19.5%    207.5 ms
//! hit  static/main.js         44172 ->     10195 B   23.1%      0.2 ms
//! 2 files, 1 hit, 1 miss, 0.1 MiB -> 0.0 MiB in 209 ms
//! ```
//!
//! Exits with 0 on success, and with 1 after a message on bad usage or an unreadable input or
//! unwritable output. The cache is best effort: a cache error only makes a file a miss.
//!
//! As a plugin it sees only the host's preopened folders, for example
//! `filecache run --dir assets::/assets --dir out::/out brotli-assets.wasm /assets /out`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use brotli::enc::BrotliEncoderParams;
use filecache_guest::{Memo, Outcome};

/// Files larger than this go through the cache's streaming reader and writer.
const STREAM_THRESHOLD: usize = 1 << 20;

const USAGE: &str = "\
usage: brotli-assets [--quality Q] [--lgwin W] IN_DIR OUT_DIR

Compresses every file under IN_DIR with Brotli into OUT_DIR/<relative path>.br,
reusing cached results for content compressed before with the same settings.

options:
  --quality Q   Brotli quality, 0-11 (default 11)
  --lgwin W     Brotli window size, log2 of bytes, 10-24 (default 22)
  -h, --help    print this help";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("brotli-assets: {message}\n\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("brotli-assets: {message}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, PartialEq)]
struct Options {
    quality: u32,
    lgwin: u32,
    in_dir: PathBuf,
    out_dir: PathBuf,
}

impl Options {
    /// Parses the arguments (without the program name); `Ok(None)` asks for the help text.
    fn parse(args: &[String]) -> Result<Option<Options>, String> {
        let mut quality = 11;
        let mut lgwin = 22;
        let mut positional = Vec::new();
        let mut args = args.iter();
        let mut options_done = false;
        while let Some(arg) = args.next() {
            if options_done || !arg.starts_with('-') || arg == "-" {
                positional.push(arg);
                continue;
            }
            let (name, inline_value) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (arg.as_str(), None),
            };
            let mut value = |name: &str| -> Result<u32, String> {
                let text = match inline_value {
                    Some(text) => text,
                    None => args.next().ok_or_else(|| format!("{name} needs a value"))?,
                };
                text.parse().map_err(|_| format!("{name}: `{text}` is not a number"))
            };
            match name {
                "-h" | "--help" if inline_value.is_none() => return Ok(None),
                "--" if inline_value.is_none() => options_done = true,
                "--quality" => quality = value(name)?,
                "--lgwin" => lgwin = value(name)?,
                _ => return Err(format!("unknown option `{arg}`")),
            }
        }
        if quality > 11 {
            return Err(format!("--quality must be 0-11, not {quality}"));
        }
        if !(10..=24).contains(&lgwin) {
            return Err(format!("--lgwin must be 10-24, not {lgwin}"));
        }
        match positional.as_slice() {
            [in_dir, out_dir] => Ok(Some(Options {
                quality,
                lgwin,
                in_dir: PathBuf::from(in_dir),
                out_dir: PathBuf::from(out_dir),
            })),
            [] | [_] => Err("expected IN_DIR and OUT_DIR".into()),
            [_, _, extra, ..] => Err(format!("unexpected argument `{extra}`")),
        }
    }
}

fn run(options: &Options) -> Result<(), String> {
    let started = Instant::now();
    let mut files = Vec::new();
    walk(&options.in_dir, Path::new(""), &mut files)?;
    files.sort();
    let width = files.iter().map(|f| display(f).len()).max().unwrap_or(0);

    let quality = options.quality.to_le_bytes();
    let lgwin = options.lgwin.to_le_bytes();
    let tool = concat!(env!("CARGO_BIN_NAME"), " ", env!("CARGO_PKG_VERSION"));
    let (mut hits, mut misses, mut total_in, mut total_out) = (0usize, 0usize, 0u64, 0u64);

    for relative in &files {
        let source = options.in_dir.join(relative);
        let input = fs::read(&source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        let file_started = Instant::now();
        let (output, outcome) = Memo::new(&[tool.as_bytes(), &quality, &lgwin, &input])
            .streamed(input.len() > STREAM_THRESHOLD)
            .try_run(|| compress(&input, options.quality, options.lgwin))
            .map_err(|e| format!("cannot compress {}: {e}", source.display()))?;
        let elapsed = file_started.elapsed();

        let mut target = options.out_dir.join(relative).into_os_string();
        target.push(".br");
        let target = PathBuf::from(target);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        fs::write(&target, &output).map_err(|e| format!("cannot write {}: {e}", target.display()))?;

        match outcome {
            Outcome::Hit => hits += 1,
            Outcome::Miss => misses += 1,
        }
        total_in += input.len() as u64;
        total_out += output.len() as u64;
        println!(
            "{outcome:<4} {path:<width$}  {in_len:>9} -> {out_len:>9} B  {ratio}  {time}",
            path = display(relative),
            in_len = input.len(),
            out_len = output.len(),
            ratio = ratio(input.len() as u64, output.len() as u64),
            time = millis(elapsed),
        );
    }

    println!(
        "{} {}, {} {}, {} {}, {} -> {} in {} ms",
        files.len(),
        plural(files.len(), "file", "files"),
        hits,
        plural(hits, "hit", "hits"),
        misses,
        plural(misses, "miss", "misses"),
        mib(total_in),
        mib(total_out),
        started.elapsed().as_millis(),
    );
    Ok(())
}

/// Collects the files under `root/relative`, as paths relative to `root`.
fn walk(root: &Path, relative: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let dir = if relative.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(relative)
    };
    let entries = fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let path = relative.join(entry.file_name());
        let file_type = entry
            .file_type()
            .map_err(|e| format!("cannot read {}: {e}", root.join(&path).display()))?;
        if file_type.is_dir() {
            walk(root, &path, files)?;
        } else if file_type.is_file() || fs::metadata(root.join(&path)).is_ok_and(|m| m.is_file()) {
            // Regular files, and symbolic links to them; links to folders are not followed.
            files.push(path);
        }
    }
    Ok(())
}

fn compress(input: &[u8], quality: u32, lgwin: u32) -> io::Result<Vec<u8>> {
    let params = BrotliEncoderParams {
        quality: quality as i32,
        lgwin: lgwin as i32,
        size_hint: input.len(),
        ..BrotliEncoderParams::default()
    };
    let mut output = Vec::with_capacity(input.len() / 4 + 64);
    brotli::BrotliCompress(&mut &input[..], &mut output, &params)?;
    Ok(output)
}

/// A relative path with `/` separators.
fn display(path: &Path) -> String {
    let parts: Vec<_> = path.iter().map(|p| p.to_string_lossy()).collect();
    parts.join("/")
}

fn ratio(input: u64, output: u64) -> String {
    if input == 0 {
        "     -".into()
    } else {
        format!("{:>5.1}%", output as f64 * 100.0 / input as f64)
    }
}

fn millis(elapsed: Duration) -> String {
    format!("{:>7.1} ms", elapsed.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Options::parse(&args)
    }

    #[test]
    fn parses_options() {
        let expected = Options {
            quality: 5,
            lgwin: 20,
            in_dir: "in".into(),
            out_dir: "out".into(),
        };
        assert_eq!(
            parse(&["--quality", "5", "--lgwin=20", "in", "out"]),
            Ok(Some(expected))
        );
        let defaults = parse(&["a", "b"]).unwrap().unwrap();
        assert_eq!((defaults.quality, defaults.lgwin), (11, 22));
        assert_eq!(parse(&["--help"]), Ok(None));
        assert_eq!(
            parse(&["--", "-in", "out"]).unwrap().unwrap().in_dir,
            PathBuf::from("-in")
        );
    }

    #[test]
    fn rejects_bad_usage() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["in"]).is_err());
        assert!(parse(&["in", "out", "more"]).is_err());
        assert!(parse(&["--quality", "12", "in", "out"]).is_err());
        assert!(parse(&["--quality", "x", "in", "out"]).is_err());
        assert!(parse(&["--lgwin", "9", "in", "out"]).is_err());
        assert!(parse(&["--lgwin"]).is_err());
        assert!(parse(&["--fast", "in", "out"]).is_err());
    }

    #[test]
    fn walks_recursively() {
        let root = std::env::temp_dir().join(format!("brotli-assets-walk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for file in ["b.css", "a/z.js", "a/b/c.html", "a.md"] {
            let path = root.join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, file).unwrap();
        }
        fs::create_dir_all(root.join("empty")).unwrap();
        let mut files = Vec::new();
        walk(&root, Path::new(""), &mut files).unwrap();
        files.sort();
        let names: Vec<String> = files.iter().map(|f| display(f)).collect();
        assert_eq!(names, ["a/b/c.html", "a/z.js", "a.md", "b.css"]);
        assert!(walk(&root.join("missing"), Path::new(""), &mut files).is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn compresses_losslessly() {
        let input = b"<html><body>hello hello hello hello</body></html>\n".repeat(50);
        let output = compress(&input, 11, 22).unwrap();
        assert!(output.len() < input.len() / 10);
        let mut decoded = Vec::new();
        brotli::BrotliDecompress(&mut &output[..], &mut decoded).unwrap();
        assert_eq!(decoded, input);
    }

    #[test]
    fn formats() {
        assert_eq!(ratio(200, 50), " 25.0%");
        assert_eq!(ratio(0, 1), "     -");
        assert_eq!(millis(Duration::from_micros(1500)), "    1.5 ms");
        assert_eq!(mib(3 << 20), "3.0 MiB");
        assert_eq!(display(Path::new("a/b/c.css")), "a/b/c.css");
        assert_eq!(plural(1, "hit", "hits"), "hit");
    }
}
