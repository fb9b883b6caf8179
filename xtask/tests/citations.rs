//! The repository explains itself: no tracked file cites the design notes that live
//! outside it, and every section a file cites in docs/
//! (`docs/ARCHITECTURE.md#<section>`, `API.md#...`, `POLICY.md#...`) exists as a
//! heading there. Reads the files `git ls-files` lists; `ebpf/vmlinux.h` holds kernel
//! identifiers, not prose, and is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Files that are not prose: generated from the kernel's BTF.
const SKIPPED: [&str; 1] = ["ebpf/vmlinux.h"];
/// How a citation of the out-of-tree design notes reads (spelled in two pieces so that
/// this file does not cite them itself).
const FORBIDDEN: [&str; 2] = [concat!("DESIGN", ".md"), concat!("DESIGN", " §")];
/// The documents whose sections code may cite, all in docs/.
const DOCS: [&str; 3] = ["ARCHITECTURE.md", "API.md", "POLICY.md"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// The tracked files, relative to the workspace root. Fails loudly outside a git
/// checkout: without the list nothing would be checked.
fn tracked_files(root: &Path) -> Vec<String> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("running `git ls-files` in {}: {e}", root.display()));
    assert!(
        out.status.success(),
        "`git ls-files` in {} failed ({}): {}; this check needs a git checkout",
        root.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = String::from_utf8(out.stdout)
        .expect("git prints UTF-8 paths")
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    assert!(
        files.iter().any(|f| f == "Cargo.toml"),
        "`git ls-files` in {} does not list Cargo.toml: not this workspace",
        root.display()
    );
    files
}

/// The text of every tracked file that is UTF-8 text (binaries are skipped), with its path.
fn tracked_texts(root: &Path) -> Vec<(String, String)> {
    tracked_files(root)
        .into_iter()
        .filter(|f| !SKIPPED.contains(&f.as_str()))
        .filter_map(|f| {
            let bytes = std::fs::read(root.join(&f))
                .unwrap_or_else(|e| panic!("reading tracked file {f}: {e}"));
            String::from_utf8(bytes).ok().map(|text| (f, text))
        })
        .collect()
}

/// The lines (1-based number, text) that cite the design notes.
fn design_citations(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| FORBIDDEN.iter().any(|f| line.contains(f)))
        .map(|(i, line)| (i + 1, line))
        .collect()
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, every other character that
/// is not alphanumeric, `-` or `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a markdown document's headings, in order (headings inside code
/// fences are not headings).
fn anchors(markdown: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut found = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if !in_fence && (1..=6).contains(&level) && line[level..].starts_with(' ') {
            found.push(slug(&line[level..]));
        }
    }
    found
}

/// Every `<DOC>#<anchor>` in `text` for the documents of [`DOCS`]: (document, anchor).
/// A `#` followed by no anchor (`#<section>`, a placeholder) cites nothing.
fn cited_anchors(text: &str) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    for doc in DOCS {
        let needle = format!("{doc}#");
        for (at, _) in text.match_indices(&needle) {
            let preceded_by_name = text[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            if preceded_by_name {
                continue;
            }
            let anchor: String = text[at + needle.len()..]
                .chars()
                .take_while(|&c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                })
                .collect();
            if !anchor.is_empty() {
                found.push((doc, anchor));
            }
        }
    }
    found
}

/// Intra-document links `](#anchor)` of a markdown document.
fn local_links(markdown: &str) -> Vec<String> {
    markdown
        .match_indices("](#")
        .map(|(at, _)| {
            markdown[at + 3..]
                .chars()
                .take_while(|&c| c != ')')
                .collect()
        })
        .collect()
}

#[test]
fn no_file_cites_the_design_notes() {
    let root = workspace();
    let mut found = Vec::new();
    for (path, text) in tracked_texts(&root) {
        for (n, line) in design_citations(&text) {
            found.push(format!("{path}:{n}: {}", line.trim()));
        }
    }
    assert!(
        found.is_empty(),
        "the design notes are not in the repository: cite the matching section of \
         docs/ARCHITECTURE.md (or docs/API.md, docs/POLICY.md) instead:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_cited_section_exists() {
    let root = workspace();
    let docs: Vec<(&str, Vec<String>)> = DOCS
        .iter()
        .map(|doc| {
            let path = root.join("docs").join(doc);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            (*doc, anchors(&text))
        })
        .collect();
    let known = |doc: &str, anchor: &str| {
        docs.iter()
            .any(|(d, a)| *d == doc && a.iter().any(|x| x == anchor))
    };
    let mut missing = Vec::new();
    let mut cited = 0;
    for (path, text) in tracked_texts(&root) {
        for (doc, anchor) in cited_anchors(&text) {
            cited += 1;
            if !known(doc, &anchor) {
                missing.push(format!("{path}: docs/{doc}#{anchor}"));
            }
        }
        if path.starts_with("docs/") && path.ends_with(".md") {
            let own = anchors(&text);
            for anchor in local_links(&text) {
                cited += 1;
                if !own.contains(&anchor) {
                    missing.push(format!("{path}: #{anchor}"));
                }
            }
        }
    }
    assert!(
        cited > 0,
        "no section citation found at all: the scan is broken"
    );
    assert!(
        missing.is_empty(),
        "cited sections that have no heading:\n{}",
        missing.join("\n")
    );
}

#[test]
fn section_anchors_are_unique() {
    let root = workspace();
    for doc in DOCS {
        let path = root.join("docs").join(doc);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut seen = anchors(&text);
        let all = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            all,
            "{}: two headings share an anchor, so one cannot be cited",
            path.display()
        );
    }
}

#[test]
fn finds_design_citations_and_nothing_else() {
    let (notes, section) = (FORBIDDEN[0], FORBIDDEN[1]);
    let first = format!("// see ../shared/{notes} §4");
    let third = format!("# {section}8 says so");
    let text = format!("{first}\nIFLA_BRPORT_DESIGNATED_PORT\n{third}\nok");
    assert_eq!(
        design_citations(&text),
        [(1, first.as_str()), (3, third.as_str())]
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug(" Who ends a call"), "who-ends-a-call");
    assert_eq!(slug(" Kernel 7.3.4"), "kernel-734");
    assert_eq!(slug(" sched_ext"), "sched_ext");
    assert_eq!(slug(" `memory.peak` (5.19)"), "memorypeak-519");
}

#[test]
fn headings_outside_code_fences_only() {
    let md = "# Title\n```\n# not a heading\n```\n## Life of a call\n#hashtag\n";
    assert_eq!(anchors(md), ["title", "life-of-a-call"]);
}

#[test]
fn parses_cited_anchors() {
    let text = "(docs/ARCHITECTURE.md#who-ends-a-call), docs/API.md#calls. MYAPI.md#x \
                `docs/POLICY.md#<section>`";
    assert_eq!(
        cited_anchors(text),
        [
            ("ARCHITECTURE.md", "who-ends-a-call".to_string()),
            ("API.md", "calls".to_string())
        ]
    );
    assert_eq!(
        local_links("see [ids](#ids) and [x](#state-dir)"),
        ["ids", "state-dir"]
    );
}
