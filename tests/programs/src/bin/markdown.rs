//! A plain `wasi:cli` command component (it imports nothing of filecache) of realistic size, for
//! comparing start-up with and without compiled-code caches: renders Markdown to HTML with
//! pulldown-cmark, finds the links with a regex, and prints a JSON summary.
//!
//! `markdown [FILE...]`: renders the files (from preopened directories), or a built-in document.

use regex::Regex;

const BUILTIN: &str = "# filecache\n\nA *persistent* cache for [WebAssembly](https://webassembly.org) \
    component plugins.\n\n- compiled once\n- loaded [in place](https://wasmtime.dev)\n\n```rust\nfn main() {}\n```\n";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let docs: Vec<(String, String)> = if args.is_empty() {
        vec![("builtin".into(), BUILTIN.into())]
    } else {
        args.iter()
            .map(|path| match std::fs::read_to_string(path) {
                Ok(text) => (path.clone(), text),
                Err(e) => {
                    eprintln!("markdown: cannot read {path}: {e}");
                    std::process::exit(2);
                }
            })
            .collect()
    };
    let link = Regex::new(r#"<a href="([^"]+)""#).expect("valid regex");
    let mut summary = Vec::new();
    for (name, text) in docs {
        let mut html = String::new();
        pulldown_cmark::html::push_html(&mut html, pulldown_cmark::Parser::new(&text));
        let links: Vec<&str> = link.captures_iter(&html).map(|c| c.get(1).unwrap().as_str()).collect();
        summary.push(serde_json::json!({
            "name": name,
            "markdown_bytes": text.len(),
            "html_bytes": html.len(),
            "links": links,
        }));
    }
    println!("{}", serde_json::to_string_pretty(&summary).expect("serializable"));
}
