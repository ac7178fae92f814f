//! Finds the kernels of a unit in its preprocessed text: with `INGOT_EMU_SCAN` defined,
//! `cuda_builtins.h` turns `__global__` and `__launch_bounds__(N)` into markers that survive
//! the preprocessor, so every kernel, macro-generated ones included, reads as
//! `__ingot_emu_global__ void [__ingot_emu_launch_bounds__(N)] name(`.

const GLOBAL: &str = "__ingot_emu_global__";
const BOUNDS: &str = "__ingot_emu_launch_bounds__";

/// One kernel found: its name and the first `__launch_bounds__` argument (0: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub name: String,
    pub max_threads: u32,
}

/// The kernels of `preprocessed`, in order of appearance, each once. A `__launch_bounds__`
/// whose first argument is not an integer literal is an error (the log line).
pub fn kernels(preprocessed: &str) -> Result<Vec<Kernel>, String> {
    let mut out: Vec<Kernel> = Vec::new();
    let mut rest = preprocessed;
    while let Some(at) = rest.find(GLOBAL) {
        rest = &rest[at + GLOBAL.len()..];
        let (kernel, tail) = one_kernel(rest)?;
        rest = tail;
        if let Some(k) = kernel {
            if !out.iter().any(|o| o.name == k.name) {
                out.push(k);
            }
        }
    }
    Ok(out)
}

/// Reads `void [bounds] name (` after the marker; `None` when it is not a kernel definition or
/// declaration of that shape (the marker in a comment or a string, say).
fn one_kernel(text: &str) -> Result<(Option<Kernel>, &str), String> {
    let mut rest = text;
    let mut max_threads = 0;
    let mut name = None;
    loop {
        let (token, tail) = next_token(rest);
        match token {
            "" => return Ok((None, tail)),
            "void" | "inline" | "static" | "extern" | "\"C\"" => rest = tail,
            BOUNDS => {
                let (inner, tail) = parenthesised(tail)
                    .ok_or_else(|| "error: unbalanced __launch_bounds__(...)".to_string())?;
                let first = inner.split(',').next().unwrap_or("").trim();
                max_threads = parse_int(first).ok_or_else(|| {
                    format!(
                        "error: __launch_bounds__({inner}): the emulator needs an integer \
                         literal as its first argument"
                    )
                })?;
                rest = tail;
            }
            "(" => return Ok((name.map(|name| Kernel { name, max_threads }), tail)),
            t if is_identifier(t) && name.is_none() => {
                name = Some(t.to_string());
                rest = tail;
            }
            _ => return Ok((None, tail)),
        }
    }
}

fn next_token(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    let Some(c) = text.chars().next() else {
        return ("", text);
    };
    let len = if c == '_' || c.is_ascii_alphanumeric() {
        text.find(|c: char| c != '_' && !c.is_ascii_alphanumeric())
            .unwrap_or(text.len())
    } else if c == '"' {
        text[1..].find('"').map_or(text.len(), |e| e + 2)
    } else {
        c.len_utf8()
    };
    (&text[..len], &text[len..])
}

/// `( ... )` at the start of `text` (after spaces): the inside and what follows.
fn parenthesised(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start().strip_prefix('(')?;
    let mut depth = 1;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&text[..i], &text[i + 1..]));
                }
            }
            _ => {}
        }
    }
    None
}

fn parse_int(s: &str) -> Option<u32> {
    let s = s.trim_end_matches(['u', 'U', 'l', 'L']);
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn is_identifier(t: &str) -> bool {
    t.starts_with(|c: char| c == '_' || c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_plain_bounded_and_repeated_kernels() {
        let text = r#"
            extern "C" __ingot_emu_global__ void a_f32( float* x, u32 n) { }
            extern "C" __ingot_emu_global__ void __ingot_emu_launch_bounds__(128) b_bf16(bf16* y);
            extern "C" __ingot_emu_global__ void __ingot_emu_launch_bounds__(128) b_bf16(bf16* y) {}
            extern "C" __ingot_emu_global__ void __ingot_emu_launch_bounds__(0x100, 2) c(void) {}
        "#;
        let ks = kernels(text).unwrap();
        let names: Vec<(&str, u32)> = ks
            .iter()
            .map(|k| (k.name.as_str(), k.max_threads))
            .collect();
        assert_eq!(names, vec![("a_f32", 0), ("b_bf16", 128), ("c", 256)]);
    }

    #[test]
    fn a_non_literal_bound_is_an_error() {
        let e = kernels("__ingot_emu_global__ void __ingot_emu_launch_bounds__(N) k() {}");
        assert!(e.unwrap_err().contains("__launch_bounds__(N)"));
    }
}
