//! Errors of a run are one line and leave naming the model file to the
//! caller (`infer` says "running FILE: …"), so the file is named once.

use runner::{chat, infer, ChatOptions, InferOptions};

fn opts(model: &std::path::Path) -> InferOptions {
    InferOptions {
        model: model.into(),
        prompt: "hi".into(),
        ..InferOptions::default()
    }
}

#[test]
fn errors_do_not_name_the_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, "not a gguf file at all").unwrap();
    let e = infer(&opts(&bad), &mut |_| Ok(())).unwrap_err();
    assert_eq!(
        e,
        "not a gguf file: magic is \"not \", expected \"GGUF\" (at byte 0)"
    );
    let missing = dir.path().join("missing.gguf");
    let e = infer(&opts(&missing), &mut |_| Ok(())).unwrap_err();
    assert!(e.starts_with("cannot open the model file: "), "{e}");
    assert!(!e.contains("missing.gguf"), "{e}");
    let co = ChatOptions {
        infer: opts(&bad),
        ..Default::default()
    };
    let e = chat(
        &co,
        &mut std::iter::empty(),
        &mut Vec::new(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(e.starts_with("not a gguf file"), "{e}");
}
