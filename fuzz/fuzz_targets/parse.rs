//! Fuzzes `gguf::parse` and everything `gguf-inspect` does with a parsed
//! header. Any panic, abort, hang or large allocation is a finding; run with
//! an allocation cap (see fuzz/README.md), the way OSS-Fuzz caps ggml_calloc.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = gguf::parse(data) else { return };
    for t in g.tensors() {
        assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes, "{}", t.name);
        assert!(g.tensor(&t.name).is_some());
    }
    for (k, v) in g.metadata() {
        let _ = (g.get(k), v.as_u64(), v.as_f32(), v.type_name());
        if let Some(a) = v.as_array() {
            let _ = (
                a.iter().count(),
                a.strs().map(Iterator::count),
                a.to_f32_vec(),
                a.to_i32_vec(),
            );
        }
    }
    let _ = g.get_str_array("tokenizer.ggml.tokens");
    let _ = g.parameter_count();
    let opts = gguf::show::ShowOptions {
        verbose: true,
        tensors: true,
    };
    if let Ok(info) = gguf::show::inspect(&g, &gguf::show::Layers::default(), &opts) {
        let _ = gguf::show::table(&info, &opts);
    }
});
