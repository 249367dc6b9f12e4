//! The Rust code blocks of the README and of every page under `docs/`, compiled as doctests so
//! that they stay true (`cargo test --doc -p filecache-host`). One item per page, so a failing
//! doctest is named after its page (`host/src/doctests.rs - doctests::Compiled (line N)`). A new
//! page under `docs/` needs a line here: `every_page_under_docs_is_compiled` fails until it has one.

macro_rules! pages {
    ($($name:ident = $path:literal,)*) => {
        $(
            #[cfg(doctest)]
            #[doc = include_str!($path)]
            pub struct $name;
        )*
        #[cfg(test)]
        const PAGES: &[&str] = &[$($path),*];
    };
}

pages! {
    Readme = "../../README.md",
    Cli = "../../docs/cli.md",
    Compiled = "../../docs/compiled.md",
    Contract = "../../docs/contract.md",
    Embedding = "../../docs/embedding.md",
    Guarantees = "../../docs/guarantees.md",
    Keyvalue = "../../docs/keyvalue.md",
    OnDisk = "../../docs/on-disk.md",
    Remote = "../../docs/remote.md",
    Serving = "../../docs/serving.md",
    Testing = "../../docs/testing.md",
    KitPython = "../../docs/kits/python.md",
    KitJavascript = "../../docs/kits/javascript.md",
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::{Path, PathBuf};

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
    }

    /// The lines of a Markdown file outside its code blocks.
    fn prose(text: &str) -> Vec<&str> {
        let mut in_code = false;
        let mut lines = Vec::new();
        for line in text.lines() {
            if line.starts_with("```") {
                in_code = !in_code;
            } else if !in_code {
                lines.push(line);
            }
        }
        lines
    }

    /// The anchors GitHub gives a file's headings: lower case, punctuation but `-` and `_` dropped,
    /// spaces as `-`, a repeated heading numbered.
    fn anchors(text: &str) -> HashSet<String> {
        let mut anchors = HashSet::new();
        for line in prose(text) {
            let Some(heading) = line
                .trim_start_matches('#')
                .strip_prefix(' ')
                .filter(|_| line.starts_with('#'))
            else {
                continue;
            };
            let slug: String = heading
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            let mut unique = slug.clone();
            let mut n = 0;
            while !anchors.insert(unique.clone()) {
                n += 1;
                unique = format!("{slug}-{n}");
            }
        }
        anchors
    }

    /// Every link from the README, BENCHMARKS.md, `docs/` and the crate READMEs to a file of the
    /// repository, or to a heading of one, lands: sections move between these files.
    #[test]
    fn links_between_the_documents_land() {
        let mut files: Vec<PathBuf> = [
            "README.md",
            "BENCHMARKS.md",
            "host/README.md",
            "host/store/README.md",
            "host/kv/README.md",
            "host/cli/README.md",
            "guest/README.md",
        ]
        .iter()
        .map(|f| root().join(f))
        .collect();
        let mut pages = Vec::new();
        markdown_under(&root().join("docs"), &mut pages);
        files.extend(pages.into_iter().map(PathBuf::from));
        let mut broken = Vec::new();
        let mut checked = 0;
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for line in prose(&text) {
                for (start, _) in line.match_indices("](") {
                    let rest = &line[start + 2..];
                    let Some(end) = rest.find(')') else { continue };
                    let target = &rest[..end];
                    if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                        continue;
                    }
                    let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
                    let resolved = if path.is_empty() {
                        file.clone()
                    } else {
                        file.parent().unwrap().join(path)
                    };
                    checked += 1;
                    let shown = file.strip_prefix(root()).unwrap().display();
                    if !resolved.exists() {
                        broken.push(format!("{shown}: {target}: no such file"));
                    } else if !anchor.is_empty()
                        && resolved.extension().is_some_and(|e| e == "md")
                        && !anchors(&std::fs::read_to_string(&resolved).unwrap()).contains(anchor)
                    {
                        broken.push(format!("{shown}: {target}: no such heading"));
                    }
                }
            }
        }
        assert!(checked > 50, "only {checked} links found");
        assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    }

    fn markdown_under(dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                markdown_under(&path, found);
            } else if path.extension().is_some_and(|e| e == "md") {
                found.push(path.to_str().unwrap().to_owned());
            }
        }
    }

    #[test]
    fn every_page_under_docs_is_compiled() {
        let root = root();
        let mut found = Vec::new();
        markdown_under(&root.join("docs"), &mut found);
        assert!(found.len() >= 10, "docs/ has only {found:?}");
        for page in found {
            let relative = page
                .strip_prefix(root.to_str().unwrap())
                .unwrap()
                .trim_start_matches('/');
            let included = format!("../../{}", relative.replace('\\', "/"));
            assert!(
                super::PAGES.contains(&included.as_str()),
                "{relative} is not compiled as doctests: add it to host/src/doctests.rs"
            );
        }
    }
}
