//! Ollama's Modelfile: `FROM`, `TEMPLATE`, `SYSTEM`, `PARAMETER`, `LICENSE`,
//! `MESSAGE`, `ADAPTER`; arguments plain, `"quoted"` or `"""multi-line"""`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{Error, Result};

/// One instruction.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `FROM <gguf path | model name>`.
    From(String),
    /// `ADAPTER <gguf path>`.
    Adapter(String),
    /// `TEMPLATE <go template>`.
    Template(String),
    /// `SYSTEM <text>`.
    System(String),
    /// `PARAMETER <name> <value>`.
    Parameter(String, String),
    /// `LICENSE <text>`.
    License(String),
    /// `MESSAGE <role> <content>`.
    Message(String, String),
}

/// A parsed Modelfile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Modelfile {
    /// Instructions in file order.
    pub commands: Vec<Command>,
}

impl Modelfile {
    /// A Modelfile with just `FROM <from>`.
    pub fn from_source(from: &str) -> Modelfile {
        Modelfile {
            commands: vec![Command::From(from.to_string())],
        }
    }

    /// Parses Modelfile text.
    pub fn parse(text: &str) -> Result<Modelfile> {
        let mut commands = Vec::new();
        let mut rest = text;
        let mut line = 1usize;
        loop {
            // skip blank lines and comments
            let trimmed = rest.trim_start_matches([' ', '\t', '\r']);
            if trimmed.is_empty() {
                break;
            }
            if let Some(after) = trimmed.strip_prefix('\n') {
                line += 1;
                rest = after;
                continue;
            }
            if trimmed.starts_with('#') {
                match trimmed.find('\n') {
                    Some(i) => {
                        rest = &trimmed[i..];
                        continue;
                    }
                    None => break,
                }
            }
            let start_line = line;
            let err = |why: String| Error::Modelfile {
                line: start_line,
                why,
            };
            let word_end = trimmed
                .find(|c: char| c.is_whitespace())
                .unwrap_or(trimmed.len());
            let word = trimmed[..word_end].to_ascii_uppercase();
            let (arg, after) = read_arg(&trimmed[word_end..]).map_err(err)?;
            line += trimmed[..trimmed.len() - after.len()].matches('\n').count();
            rest = after;
            let arg_err = |why: &str| Error::Modelfile {
                line: start_line,
                why: why.to_string(),
            };
            let cmd = match word.as_str() {
                "FROM" => Command::From(
                    non_empty(arg, "FROM needs a model name or a GGUF path").map_err(arg_err)?,
                ),
                "ADAPTER" => {
                    Command::Adapter(non_empty(arg, "ADAPTER needs a GGUF path").map_err(arg_err)?)
                }
                "TEMPLATE" => Command::Template(arg),
                "SYSTEM" => Command::System(arg),
                "LICENSE" => Command::License(arg),
                "PARAMETER" => {
                    let (k, v) = split_first_word(&arg)
                        .ok_or_else(|| arg_err("PARAMETER needs a name and a value"))?;
                    Command::Parameter(k.to_ascii_lowercase(), unquote(v))
                }
                "MESSAGE" => {
                    let (role, content) = split_first_word(&arg)
                        .ok_or_else(|| arg_err("MESSAGE needs a role and content"))?;
                    let role = role.to_ascii_lowercase();
                    if !["system", "user", "assistant", "tool"].contains(&role.as_str()) {
                        return Err(arg_err(&format!(
                            "MESSAGE role {role:?} is not system, user, assistant or tool"
                        )));
                    }
                    Command::Message(role, unquote(content))
                }
                other => return Err(err(format!("unknown instruction {other:?}"))),
            };
            commands.push(cmd);
        }
        if !commands.iter().any(|c| matches!(c, Command::From(_))) {
            return Err(Error::Modelfile {
                line: 1,
                why: "no FROM instruction".into(),
            });
        }
        Ok(Modelfile { commands })
    }

    /// The `FROM` argument (the last one wins, as in Ollama).
    pub fn from(&self) -> Option<&str> {
        self.commands.iter().rev().find_map(|c| match c {
            Command::From(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The params layer JSON (keys sorted, as Go's encoder writes a map);
    /// `None` without PARAMETER lines. Values are typed like Ollama's
    /// options; an unknown name or a bad value is an error.
    pub fn params_json(&self) -> Result<Option<String>> {
        let mut map: BTreeMap<String, Value> = BTreeMap::new();
        for c in &self.commands {
            let Command::Parameter(k, v) = c else {
                continue;
            };
            let bad = || Error::Modelfile {
                line: 0,
                why: format!("PARAMETER {k}: invalid value {v:?}"),
            };
            let value = match param_kind(k) {
                Some(Kind::Int) => Value::from(v.trim().parse::<i64>().map_err(|_| bad())?),
                Some(Kind::Float) => {
                    let f = v.trim().parse::<f64>().map_err(|_| bad())?;
                    if f.fract() == 0.0 && f.abs() < 1e15 {
                        // Go's encoder writes integral floats without ".0"
                        Value::from(f as i64)
                    } else {
                        serde_json::Number::from_f64(f)
                            .map(Value::Number)
                            .ok_or_else(bad)?
                    }
                }
                Some(Kind::Bool) => Value::from(v.trim().parse::<bool>().map_err(|_| bad())?),
                Some(Kind::Strings) => {
                    let entry = map.entry(k.clone()).or_insert_with(|| Value::Array(vec![]));
                    entry
                        .as_array_mut()
                        .expect("stop is an array")
                        .push(Value::from(v.as_str()));
                    continue;
                }
                None => {
                    return Err(Error::Modelfile {
                        line: 0,
                        why: format!("unknown parameter {k:?}"),
                    })
                }
            };
            map.insert(k.clone(), value);
        }
        if map.is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::to_string(&map).expect("params serialize")))
    }

    /// The messages layer JSON (`[{"role":…,"content":…}]`), if any MESSAGE.
    pub fn messages_json(&self) -> Option<String> {
        let msgs: Vec<Value> = self
            .commands
            .iter()
            .filter_map(|c| match c {
                Command::Message(r, t) => Some(serde_json::json!({"role": r, "content": t})),
                _ => None,
            })
            .collect();
        (!msgs.is_empty()).then(|| Value::Array(msgs).to_string())
    }
}

enum Kind {
    Int,
    Float,
    Bool,
    Strings,
}

fn param_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "num_ctx" | "num_batch" | "num_gpu" | "main_gpu" | "num_thread" | "num_keep" | "seed"
        | "num_predict" | "top_k" | "repeat_last_n" => Kind::Int,
        "top_p" | "min_p" | "typical_p" | "temperature" | "repeat_penalty" | "presence_penalty"
        | "frequency_penalty" => Kind::Float,
        "use_mmap" | "numa" | "penalize_newline" => Kind::Bool,
        "stop" => Kind::Strings,
        _ => return None,
    })
}

fn non_empty(s: String, why: &'static str) -> std::result::Result<String, &'static str> {
    if s.trim().is_empty() {
        Err(why)
    } else {
        Ok(s)
    }
}

/// Reads an argument after the instruction word: `"""…"""`, `"…"` or the
/// rest of the line. Returns it and what follows.
fn read_arg(s: &str) -> std::result::Result<(String, &str), String> {
    let s = s.trim_start_matches([' ', '\t']);
    if let Some(body) = s.strip_prefix("\"\"\"") {
        let end = body.find("\"\"\"").ok_or("unterminated \"\"\" string")?;
        return Ok((body[..end].to_string(), &body[end + 3..]));
    }
    let end = s.find('\n').unwrap_or(s.len());
    let line = s[..end].trim_end_matches(['\r', ' ', '\t']);
    // PARAMETER/MESSAGE keep their own quoting for the value part
    Ok((unquote_whole(line), &s[end..]))
}

fn unquote_whole(s: &str) -> String {
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') && !s[1..s.len() - 1].contains('"') {
        s[1..s.len() - 1].to_string()
    } else {
        s.to_string()
    }
}

fn unquote(s: &str) -> String {
    let t = s.trim();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        t[1..t.len() - 1].replace("\\\"", "\"").replace("\\n", "\n")
    } else {
        t.to_string()
    }
}

fn split_first_word(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    let end = s.find(char::is_whitespace)?;
    let rest = s[end..].trim_start();
    (!rest.is_empty()).then(|| (s[..end].to_string(), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_instruction() {
        let text = "# comment\nFROM ./model.gguf\nTEMPLATE \"\"\"{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\"\"\"\nsystem You are helpful.\nPARAMETER temperature 0.2\nPARAMETER stop \"<|im_end|>\"\nPARAMETER stop <|im_start|>\nPARAMETER num_ctx 2048\nLICENSE \"\"\"Apache\nLicense\"\"\"\nMESSAGE user Hi there\nMESSAGE assistant \"Hello!\"\n";
        let m = Modelfile::parse(text).unwrap();
        assert_eq!(m.from(), Some("./model.gguf"));
        assert_eq!(
            m.commands[1],
            Command::Template(
                "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}".into()
            )
        );
        assert_eq!(m.commands[2], Command::System("You are helpful.".into()));
        assert_eq!(m.commands[7], Command::License("Apache\nLicense".into()));
        assert_eq!(
            m.params_json().unwrap().unwrap(),
            r#"{"num_ctx":2048,"stop":["<|im_end|>","<|im_start|>"],"temperature":0.2}"#
        );
        assert_eq!(
            m.messages_json().unwrap(),
            r#"[{"role":"user","content":"Hi there"},{"role":"assistant","content":"Hello!"}]"#
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = Modelfile::parse("FROM x\n\nBOGUS y\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Modelfile line 3: unknown instruction \"BOGUS\""
        );
        assert!(Modelfile::parse("SYSTEM hi\n")
            .unwrap_err()
            .to_string()
            .contains("no FROM"));
        assert!(Modelfile::parse("FROM x\nTEMPLATE \"\"\"open")
            .unwrap_err()
            .to_string()
            .contains("line 2"));
        assert!(Modelfile::parse("FROM x\nMESSAGE robot hi").is_err());
        let m = Modelfile::parse("FROM x\nPARAMETER temprature 1").unwrap();
        assert!(m
            .params_json()
            .unwrap_err()
            .to_string()
            .contains("unknown parameter"));
        let m = Modelfile::parse("FROM x\nPARAMETER top_k many").unwrap();
        assert!(m.params_json().is_err());
    }
}
