//! A model held for many runs (what `serve` does): a chat's next turn
//! reuses the cache and still answers as a fresh one-shot run; a canceled
//! run stops between tokens; the context carries on.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

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

/// Runs `jobs` together with [`runner::Held::run_batched`]; each one's
/// text and result, in the order given.
fn batched(
    h: &mut runner::Held,
    jobs: Vec<(InferOptions, bool)>,
) -> Vec<(String, runner::RunResult)> {
    batched_log(h, jobs).0
}

/// What a job sent, in the order all jobs sent it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sent {
    /// Job `i` joined (its rendered prompt's end).
    Joined(usize),
    /// A token of job `i`.
    Token(usize),
}

/// [`batched`], with the order in which the jobs' events came.
fn batched_log(
    h: &mut runner::Held,
    jobs: Vec<(InferOptions, bool)>,
) -> (Vec<(String, runner::RunResult)>, Vec<Sent>) {
    let log: Rc<RefCell<Vec<Sent>>> = Rc::default();
    /// A job's text so far, and its result once it ends.
    type Slot = Rc<RefCell<(String, Option<runner::RunResult>)>>;
    let out: Vec<Slot> = jobs
        .iter()
        .map(|_| Rc::new(RefCell::new((String::new(), None))))
        .collect();
    let mut tasks: std::collections::VecDeque<runner::Task> = jobs
        .into_iter()
        .zip(&out)
        .enumerate()
        .map(|(i, ((opts, chat), o))| {
            let (text, done, log) = (o.clone(), o.clone(), log.clone());
            runner::Task::Generate(Box::new(runner::BatchJob {
                opts,
                chat,
                context: vec![],
                cancel: Box::new(|| false),
                on_event: Box::new(move |ev| {
                    match ev {
                        Event::PromptEnd(_) => log.borrow_mut().push(Sent::Joined(i)),
                        Event::Token { .. } => log.borrow_mut().push(Sent::Token(i)),
                        _ => {}
                    }
                    if let Event::Token { text: t, .. } | Event::Text(t) = ev {
                        text.borrow_mut().0.push_str(t);
                    }
                    Ok(())
                }),
                on_done: Box::new(move |r| done.borrow_mut().1 = Some(r.unwrap())),
            }))
        })
        .collect();
    h.run_batched(&mut |_| tasks.pop_front());
    let r = out
        .into_iter()
        .map(|o| {
            let (t, r) = o.take();
            (t, r.expect("the job ended"))
        })
        .collect();
    let log = log.take();
    (r, log)
}

/// llama.cpp's engine batching two sequences: a chat's next turn goes to
/// the slot holding its first turn and reuses those cells, and each
/// answer equals the one-sequence context's, turn for turn (the same
/// prompts split into the same batches: turn one, then what turn two adds).
#[test]
fn llama_cpp_batched_turns_reuse_their_slot_and_match_one_at_a_time() {
    let o = InferOptions {
        engine: runner::EngineChoice::LlamaCpp,
        batch_invariant: false,
        ..options()
    };
    let first = InferOptions {
        messages: vec![Message::user("Hi!")],
        ..o.clone()
    };
    let other = InferOptions {
        prompt: "Volcanoes are interesting because".into(),
        raw: true,
        num_predict: Some(16),
        ..o.clone()
    };
    let second = |a: &str| InferOptions {
        messages: vec![
            Message::user("Hi!"),
            Message::assistant(a),
            Message::user("What is 2+2?"),
        ],
        ..o.clone()
    };
    // one sequence, one run after another
    let never = || false;
    let mut want = vec![];
    hold(&o, &mut |h| {
        for (opts, chat) in [(first.clone(), true), (other.clone(), false)] {
            let mut t = String::new();
            h.run(
                &Job {
                    chat,
                    ..Job::new(&opts, &never)
                },
                &mut |ev| {
                    if let Event::Token { text, .. } | Event::Text(text) = ev {
                        t.push_str(text);
                    }
                    Ok(())
                },
            )?;
            want.push(t);
        }
        Ok(())
    })
    .unwrap();
    hold(
        &InferOptions {
            n_seq: 2,
            ..o.clone()
        },
        &mut |h| {
            assert_eq!(h.n_seq(), 2);
            let r = batched(h, vec![(first.clone(), true), (other.clone(), false)]);
            assert_eq!(r[0].0, want[0]);
            assert_eq!(r[1].0, want[1]);
            assert_eq!((r[0].1.cached, r[1].1.cached), (0, 0));
            let next = second(&r[0].0);
            let r2 = batched(h, vec![(other.clone(), false), (next.clone(), true)]);
            assert!(r2[1].1.cached > 10, "cached {}", r2[1].1.cached);
            // the same turn on one sequence, after the same first turn
            let mut alone = String::new();
            hold(&o, &mut |h1| {
                for (opts, i) in [(&first, 0), (&next, 1)] {
                    let mut t = String::new();
                    let r = h1.run(
                        &Job {
                            chat: true,
                            ..Job::new(opts, &never)
                        },
                        &mut |ev| {
                            if let Event::Token { text, .. } | Event::Text(text) = ev {
                                t.push_str(text);
                            }
                            Ok(())
                        },
                    )?;
                    assert_eq!(r.cached > 10, i == 1);
                    alone = t;
                }
                Ok(())
            })?;
            assert_eq!(r2[1].0, alone);
            // embeddings on a free slot, between runs
            let e = h.embed(&["Why is the sky blue?".into()], true, 1)?;
            assert_eq!(e.embeddings[0].len(), 576);
            Ok(())
        },
    )
    .unwrap();
}

/// llama.cpp's engine batching two runs longer than their context: each
/// sequence makes room on its own (keeps `num_keep`, drops half the rest)
/// and both runs reach `num_predict`.
#[test]
fn llama_cpp_batched_runs_shift_their_own_context() {
    let o = InferOptions {
        engine: runner::EngineChoice::LlamaCpp,
        n_ctx: 256,
        n_seq: 2,
        num_predict: Some(400),
        raw: true,
        ..options()
    };
    let jobs: Vec<(InferOptions, bool)> = ["1 2 3 4 5 6 7 8", "Once upon a time"]
        .iter()
        .map(|p| {
            let opts = InferOptions {
                prompt: p.to_string(),
                num_keep: 4,
                ..o.clone()
            };
            (opts, false)
        })
        .collect();
    hold(&o, &mut |h| {
        assert_eq!(h.n_ctx(), 256);
        for (text, r) in batched(h, jobs.clone()) {
            assert_eq!(r.summary.stats.eval_count, 400, "{text}");
            assert!(r.tokens.len() > 400);
        }
        Ok(())
    })
    .unwrap();
}

/// A long prompt joins a running job in passes of `n_batch`, a step of
/// the running job between two: the running job keeps getting tokens
/// while the prompt goes in, and both answers equal lone runs' (the
/// joining prompt is split into the passes a lone run makes).
fn joining_prompt_goes_in_between_steps(engine: runner::EngineChoice) {
    let o = InferOptions {
        engine,
        batch_invariant: false,
        n_batch: 16,
        raw: true,
        ..options()
    };
    let running = InferOptions {
        prompt: "Once upon a time".into(),
        num_predict: Some(40),
        ..o.clone()
    };
    let long: Vec<String> = (1..=60).map(|i| i.to_string()).collect();
    let joining = InferOptions {
        prompt: long.join(" "),
        ..o.clone()
    };
    let never = || false;
    let mut want = vec![];
    hold(&o, &mut |h| {
        for opts in [&running, &joining] {
            let mut t = String::new();
            h.run(&Job::new(opts, &never), &mut |ev| {
                if let Event::Token { text, .. } | Event::Text(text) = ev {
                    t.push_str(text);
                }
                Ok(())
            })?;
            want.push(t);
        }
        Ok(())
    })
    .unwrap();
    hold(
        &InferOptions {
            n_seq: 2,
            ..o.clone()
        },
        &mut |h| {
            let (r, log) = batched_log(h, vec![(running.clone(), false), (joining.clone(), false)]);
            assert_eq!(r[0].0, want[0]);
            assert_eq!(r[1].0, want[1]);
            let stats = &r[1].1.summary.stats;
            let passes = stats.prompt_eval_count.div_ceil(16);
            assert!(passes >= 6, "{} prompt tokens", stats.prompt_eval_count);
            // the running job's tokens from the second's join to its first token
            let joined = log.iter().position(|&e| e == Sent::Joined(1)).unwrap();
            let first = log.iter().position(|&e| e == Sent::Token(1)).unwrap();
            let between = log[joined..first]
                .iter()
                .filter(|&&e| e == Sent::Token(0))
                .count();
            assert!(
                between >= passes,
                "{between} tokens in {passes} passes: {log:?}"
            );
            Ok(())
        },
    )
    .unwrap();
}

#[test]
fn joining_prompt_goes_in_between_steps_native() {
    joining_prompt_goes_in_between_steps(runner::EngineChoice::Native);
}

#[test]
fn llama_cpp_joining_prompt_goes_in_between_steps() {
    joining_prompt_goes_in_between_steps(runner::EngineChoice::LlamaCpp);
}
