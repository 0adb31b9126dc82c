//! Several sequences in one cache, one token of each per forward pass
//! (`Session::step`, what a server's continuous batching runs): every
//! sequence's logits equal, bit for bit, those of the same sequence run
//! alone, whatever its slot, the other sequences in the batch, a gap in
//! the slots, or a sequence joining later. SmolLM2 (llama) and Gemma3
//! (sliding-window layers), with and without flash attention.

use engine::llama_cpp::argmax;
use engine::session::{Session, SessionOptions};

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";
const N_GEN: usize = 24;

/// Greedy logits of `prompt` then `N_GEN` generated tokens, run alone.
fn alone(model: &dyn engine::session::Model, so: &SessionOptions, prompt: &[i32]) -> Vec<Vec<f32>> {
    let mut sess = Session::new(model, so).unwrap();
    let mut out = vec![sess.decode(prompt).unwrap().to_vec()];
    for _ in 0..N_GEN {
        let t = argmax(out.last().unwrap());
        out.push(sess.decode(&[t]).unwrap().to_vec());
    }
    out
}

fn check(file: &str, prompts: [&[i32]; 3], flash: bool) {
    let path = pipeline_tests::real_model(file);
    let loaded = models::load(&path, &Default::default()).unwrap();
    let model = loaded.model.as_ref();
    let so = SessionOptions {
        n_ctx: 300, // not a multiple of 256: slots are padded apart
        n_threads: 1,
        flash_attn: flash,
        ..Default::default()
    };
    let want: Vec<Vec<Vec<f32>>> = prompts.iter().map(|p| alone(model, &so, p)).collect();

    let mut sess = Session::new(model, &SessionOptions { n_seq: 4, ..so }).unwrap();
    let n_vocab = want[0][0].len();
    // sequences 0 and 1 go to slots 3 and 0 (a gap at 1 and 2); sequence 2
    // joins slot 1 after 6 steps, making slots 0, 1 and 3: two runs
    let slots = [3usize, 0, 1];
    let mut step = [0usize; 3]; // logits compared so far
    for i in 0..2 {
        let got = sess.decode_seq(slots[i], prompts[i]).unwrap();
        assert!(
            got == &want[i][0][..],
            "{file}: prompt {i} in slot {}",
            slots[i]
        );
        step[i] = 1;
    }
    for round in 0..N_GEN + 6 {
        if round == 6 {
            let got = sess.decode_seq(slots[2], prompts[2]).unwrap();
            assert!(got == &want[2][0][..], "{file}: prompt 2 joining later");
            step[2] = 1;
        }
        let live: Vec<usize> = (0..3)
            .filter(|&i| step[i] > 0 && step[i] <= N_GEN)
            .collect();
        if live.is_empty() {
            break;
        }
        let steps: Vec<(usize, i32)> = live
            .iter()
            .map(|&i| (slots[i], argmax(&want[i][step[i] - 1])))
            .collect();
        let rows = sess.step(&steps).unwrap().to_vec();
        for (r, &i) in live.iter().enumerate() {
            let got = &rows[r * n_vocab..(r + 1) * n_vocab];
            assert!(
                got == &want[i][step[i]][..],
                "{file} flash={flash}: sequence {i} (slot {}) step {} differs from its run alone \
                 (batch of {})",
                slots[i],
                step[i],
                live.len()
            );
            step[i] += 1;
        }
    }
    assert!(
        step.iter().all(|&s| s == N_GEN + 1),
        "every sequence ran to the end"
    );
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(sess.history_of(slots[i]).len(), p.len() + N_GEN);
    }
    assert!(sess.history_of(2).is_empty(), "slot 2 was never used");
}

const LLAMA_PROMPTS: [&[i32]; 3] = [
    &[1, 504, 3575, 282, 4649, 314],
    &[1, 1780, 253, 11926, 30, 216, 10434, 28, 216],
    &[1, 504, 1345, 282, 5036],
];
const GEMMA_PROMPTS: [&[i32]; 3] = [
    &[2, 818, 5279, 529, 7001, 563],
    &[2, 3689, 563, 496, 1884, 529, 236881, 108],
    &[2, 9259, 236764, 1041],
];

#[test]
fn smollm2_steps_equal_runs_alone() {
    check(SMOLLM2, LLAMA_PROMPTS, false);
}

#[test]
fn smollm2_steps_equal_runs_alone_flash() {
    check(SMOLLM2, LLAMA_PROMPTS, true);
}

#[test]
fn gemma3_steps_equal_runs_alone() {
    check(GEMMA3, GEMMA_PROMPTS, false);
}

#[test]
fn gemma3_steps_equal_runs_alone_flash() {
    check(GEMMA3, GEMMA_PROMPTS, true);
}

#[test]
fn a_step_rejects_a_sequence_twice_or_outside() {
    let path = pipeline_tests::real_model(SMOLLM2);
    let loaded = models::load(&path, &Default::default()).unwrap();
    let so = SessionOptions {
        n_ctx: 64,
        n_seq: 2,
        n_threads: 1,
        ..Default::default()
    };
    let mut sess = Session::new(loaded.model.as_ref(), &so).unwrap();
    let e = sess.step(&[(0, 1), (0, 2)]).unwrap_err().to_string();
    assert!(e.contains("sequence 0 appears twice"), "{e}");
    let e = sess.step(&[(2, 1)]).unwrap_err().to_string();
    assert!(e.contains("sequence 2 outside a cache of 2"), "{e}");
    assert!(sess.history_of(0).is_empty() && sess.history_of(1).is_empty());
}
