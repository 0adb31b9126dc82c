//! Quantizing a model to another weight type with llama.cpp's quantizer:
//! what `ollama create --quantize q4_K_M` does to an F16 or F32 model.

use std::ffi::CString;
use std::path::Path;

use llama_cpp_sys_2 as sys;

/// The types a model can be quantized to, by the names Ollama and
/// llama.cpp's `llama-quantize` give them.
const TYPES: &[(&str, sys::llama_ftype)] = &[
    ("Q4_0", sys::LLAMA_FTYPE_MOSTLY_Q4_0),
    ("Q4_1", sys::LLAMA_FTYPE_MOSTLY_Q4_1),
    ("Q5_0", sys::LLAMA_FTYPE_MOSTLY_Q5_0),
    ("Q5_1", sys::LLAMA_FTYPE_MOSTLY_Q5_1),
    ("Q8_0", sys::LLAMA_FTYPE_MOSTLY_Q8_0),
    ("Q2_K", sys::LLAMA_FTYPE_MOSTLY_Q2_K),
    ("Q3_K_S", sys::LLAMA_FTYPE_MOSTLY_Q3_K_S),
    ("Q3_K_M", sys::LLAMA_FTYPE_MOSTLY_Q3_K_M),
    ("Q3_K_L", sys::LLAMA_FTYPE_MOSTLY_Q3_K_L),
    ("Q4_K_S", sys::LLAMA_FTYPE_MOSTLY_Q4_K_S),
    ("Q4_K_M", sys::LLAMA_FTYPE_MOSTLY_Q4_K_M),
    ("Q5_K_S", sys::LLAMA_FTYPE_MOSTLY_Q5_K_S),
    ("Q5_K_M", sys::LLAMA_FTYPE_MOSTLY_Q5_K_M),
    ("Q6_K", sys::LLAMA_FTYPE_MOSTLY_Q6_K),
    ("F16", sys::LLAMA_FTYPE_MOSTLY_F16),
    ("BF16", sys::LLAMA_FTYPE_MOSTLY_BF16),
    ("F32", sys::LLAMA_FTYPE_ALL_F32),
];

/// A weight type to quantize to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantType {
    name: &'static str,
    ftype: sys::llama_ftype,
}

impl QuantType {
    /// The type named `s`, in any case (`q4_K_M`, `Q8_0`); an unknown name
    /// is Ollama's error text.
    pub fn parse(s: &str) -> Result<QuantType, String> {
        TYPES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|&(name, ftype)| QuantType { name, ftype })
            .ok_or_else(|| format!("unsupported quantization type {s}"))
    }

    /// Its name, upper case (`Q4_K_M`).
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// How to quantize.
#[derive(Clone, Copy, Debug)]
pub struct QuantizeOptions {
    /// The target type.
    pub to: QuantType,
    /// Threads (0: llama.cpp's choice, the hardware's).
    pub threads: usize,
    /// Quantize weights that are quantized already (llama-quantize's
    /// `--allow-requantize`; loses precision twice).
    pub allow_requantize: bool,
}

/// Writes `output`, the GGUF model at `input` with its weights quantized
/// as `opts` says (llama.cpp's per-tensor choices for the type: a `_K_M`
/// type keeps some tensors at a higher precision). `output` must not
/// exist; on failure it is removed.
pub fn quantize(input: &Path, output: &Path, opts: &QuantizeOptions) -> Result<(), String> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{}: a path with a NUL byte", p.display()))
    };
    let (inp, out) = (c(input)?, c(output)?);
    if output.exists() {
        return Err(format!("{}: exists already", output.display()));
    }
    crate::llama_cpp::init_backend();
    // SAFETY: returns a plain struct of defaults.
    let mut params = unsafe { sys::llama_model_quantize_default_params() };
    params.ftype = opts.to.ftype;
    params.nthread = i32::try_from(opts.threads).unwrap_or(0);
    params.allow_requantize = opts.allow_requantize;
    // SAFETY: both paths are NUL-terminated and live across the call; the
    // params' pointers are the defaults' (null: no imatrix, overrides or
    // pruning). llama.cpp catches its own exceptions and returns non-zero.
    let status = unsafe { sys::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params) };
    if status != 0 {
        let _ = std::fs::remove_file(output);
        return Err(format!(
            "llama.cpp could not quantize {} to {}",
            input.display(),
            opts.to.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_by_any_case_and_ollamas_error() {
        assert_eq!(QuantType::parse("q4_K_M").unwrap().name(), "Q4_K_M");
        assert_eq!(QuantType::parse("Q8_0").unwrap().name(), "Q8_0");
        assert_eq!(
            QuantType::parse("q9_9").unwrap_err(),
            "unsupported quantization type q9_9"
        );
    }
}
