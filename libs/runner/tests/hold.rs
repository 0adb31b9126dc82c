//! A model held for many runs (what `serve` does): a chat's next turn
//! reuses the cache and still answers as a fresh one-shot run; a canceled
//! run stops between tokens; the context carries on.

use std::cell::Cell;

use runner::{hold, infer, Event, InferOptions, Job, Message};

fn options() -> InferOptions {
    let mut o = InferOptions {
        model: pipeline_tests::real_model("SmolLM2-135M-Instruct.Q4_1.gguf"),
        num_predict: Some(8),
        n_ctx: 1024,
        n_threads: 1,
        // cached and fresh runs decode in different batches: see chat.rs
        batch_invariant: true,
        ..InferOptions::default()
    };
    o.sampler.temperature = 0.0;
    o
}

fn one_shot(o: &InferOptions) -> String {
    let mut text = String::new();
    infer(o, &mut |ev| {
        if let Event::Token { text: t, .. } | Event::Text(t) = ev {
            text.push_str(t);
        }
        Ok(())
    })
    .unwrap();
    text
}

#[test]
fn held_runs_reuse_the_cache_and_match_one_shot_runs() {
    let o = options();
    let never = || false;
    hold(&o, &mut |h| {
        let mut text = |job: &Job| {
            let mut t = String::new();
            let r = h
                .run(job, &mut |ev| {
                    if let Event::Token { text, .. } | Event::Text(text) = ev {
                        t.push_str(text);
                    }
                    Ok(())
                })
                .unwrap();
            (t, r)
        };
        let first = InferOptions {
            messages: vec![Message::user("Hi!")],
            ..o.clone()
        };
        let (a, r) = text(&Job {
            chat: true,
            ..Job::new(&first, &never)
        });
        assert_eq!(r.cached, 0);
        assert_eq!(
            a,
            one_shot(&InferOptions {
                prompt: "Hi!".into(),
                ..o.clone()
            })
        );
        let second = InferOptions {
            messages: vec![
                Message::user("Hi!"),
                Message::assistant(&a),
                Message::user("What is 2+2?"),
            ],
            ..o.clone()
        };
        let (b, r) = text(&Job {
            chat: true,
            ..Job::new(&second, &never)
        });
        assert!(r.cached > 10, "cached {}", r.cached);
        let fresh = InferOptions {
            messages: vec![Message::user("Hi!"), Message::assistant(&a)],
            prompt: "What is 2+2?".into(),
            ..o.clone()
        };
        assert_eq!(b, one_shot(&fresh));
        // canceled after three tokens
        let n = Cell::new(0);
        let cancel = || {
            n.set(n.get() + 1);
            n.get() > 3
        };
        let long = InferOptions {
            prompt: "Tell me a story.".into(),
            num_predict: Some(100),
            ..o.clone()
        };
        let (_, r) = text(&Job::new(&long, &cancel));
        assert!(r.canceled);
        assert_eq!(r.summary.stats.eval_count, 4); // the fourth was sampled, then canceled
                                                   // the context of a run is its prompt and answer
        let (_, r) = text(&Job::new(&first, &never));
        assert_eq!(
            r.tokens.len(),
            r.summary.stats.prompt_eval_count + r.cached + r.summary.stats.eval_count
        );
        Ok(())
    })
    .unwrap();
}
