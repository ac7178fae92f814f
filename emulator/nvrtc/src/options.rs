//! NVRTC's compile options, resolved once into [`Options`]. Options that change nothing on the
//! host (line info, fast-math flags, register limits) are accepted and ignored; an option NVRTC
//! does not know is refused, as NVRTC refuses it (`NVRTC_ERROR_INVALID_OPTION`).

/// What a compile needs from the option list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The requested architecture, e.g. `sm_90` (or `compute_90`: PTX only, no CUBIN).
    pub arch: String,
    /// `__CUDA_ARCH__` for it, e.g. 900.
    pub cuda_arch: u32,
    /// `-std=` value, e.g. `c++17`.
    pub std: String,
    /// `-D` definitions, as given (`NAME` or `NAME=VALUE`).
    pub defines: Vec<String>,
    /// `-U` names.
    pub undefines: Vec<String>,
}

/// The default architecture when none is given (NVRTC 13's default is `compute_75`).
const DEFAULT_ARCH: &str = "compute_75";

/// Options that are accepted with any value (or none) and change nothing here.
const IGNORED: &[&str] = &[
    "-lineinfo",
    "--generate-line-info",
    "-G",
    "--device-debug",
    "-default-device",
    "--device-as-default-execution-space",
    "-w",
    "--disable-warnings",
    "--use_fast_math",
    "-use_fast_math",
    "--extra-device-vectorization",
    "-extra-device-vectorization",
    "--restrict",
    "-restrict",
    "--dopt",
    "-dopt",
];

const IGNORED_WITH_VALUE: &[&str] = &[
    "--fmad",
    "-fmad",
    "--ftz",
    "-ftz",
    "--prec-div",
    "-prec-div",
    "--prec-sqrt",
    "-prec-sqrt",
    "--maxrregcount",
    "-maxrregcount",
    "--ptxas-options",
    "-Xptxas",
    "--dlink-time-opt",
    "-dlto",
];

/// Parses NVRTC's options; the error is the log line NVRTC would give.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut arch = DEFAULT_ARCH.to_string();
    let mut std = "c++17".to_string();
    let mut defines = Vec::new();
    let mut undefines = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let mut value_or_next = || value.clone().or_else(|| it.next().cloned());
        match key {
            "--gpu-architecture" | "-arch" => {
                arch = value_or_next().ok_or("option -arch needs a value")?;
            }
            "--std" | "-std" => std = value_or_next().ok_or("option -std needs a value")?,
            "--define-macro" | "-D" => defines.push(value_or_next().ok_or("-D needs a value")?),
            "--undefine-macro" | "-U" => undefines.push(value_or_next().ok_or("-U needs a value")?),
            k if k.starts_with("-D") && k.len() > 2 => defines.push(arg[2..].to_string()),
            k if k.starts_with("-U") && k.len() > 2 => undefines.push(arg[2..].to_string()),
            k if IGNORED.contains(&k) && value.is_none() => {}
            k if IGNORED_WITH_VALUE.contains(&k) => {
                value_or_next().ok_or_else(|| format!("option {k} needs a value"))?;
            }
            _ => return Err(format!("error: unrecognized option {arg}")),
        }
    }
    let cuda_arch = arch_number(&arch)
        .ok_or_else(|| format!("error: invalid value for --gpu-architecture (-arch): {arch}"))?;
    if !["c++03", "c++11", "c++14", "c++17", "c++20"].contains(&std.as_str()) {
        return Err(format!("error: invalid value for -std: {std}"));
    }
    Ok(Options {
        arch,
        cuda_arch,
        std,
        defines,
        undefines,
    })
}

/// `sm_90` / `sm_90a` / `compute_90` → 900.
fn arch_number(arch: &str) -> Option<u32> {
    let digits = arch
        .strip_prefix("sm_")
        .or_else(|| arch.strip_prefix("compute_"))?
        .trim_end_matches(['a', 'f']);
    let n: u32 = digits.parse().ok()?;
    (n >= 50).then_some(n * 10)
}

impl Options {
    /// Whether a CUBIN is produced (a real architecture), not only PTX.
    pub fn has_cubin(&self) -> bool {
        self.arch.starts_with("sm_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ingots_options_parse() {
        let o = parse(&strings(&[
            "--gpu-architecture=sm_90",
            "-std=c++17",
            "-default-device",
            "-lineinfo",
        ]))
        .unwrap();
        assert_eq!(
            (o.arch.as_str(), o.cuda_arch, o.has_cubin()),
            ("sm_90", 900, true)
        );
        let o = parse(&strings(&["-arch", "compute_80", "-DX=1", "--fmad=false"])).unwrap();
        assert_eq!((o.cuda_arch, o.has_cubin()), (800, false));
        assert_eq!(o.defines, vec!["X=1".to_string()]);
        assert_eq!(parse(&strings(&["-arch=sm_90a"])).unwrap().cuda_arch, 900);
    }

    #[test]
    fn unknown_options_and_architectures_are_refused() {
        assert!(parse(&strings(&["--frobnicate"]))
            .unwrap_err()
            .contains("--frobnicate"));
        assert!(parse(&strings(&["-arch=sm_x"])).is_err());
        assert!(parse(&strings(&["-std=c++99"])).is_err());
        assert!(parse(&strings(&["-arch"])).is_err());
    }
}
