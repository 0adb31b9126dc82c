//! What `ollama show` tells about a model, from the GGUF header and the
//! manifest's small text layers: [`inspect`] builds it as JSON, [`table`]
//! renders it the way `ollama show` prints it.

use serde_json::{json, Map, Value as Json};

use crate::{format_parameter_count, Error, Gguf, Value};

/// Arrays longer than this are shown as `null` unless `verbose`, as Ollama's
/// `/api/show` does (its decoder keeps arrays up to 1024 elements).
pub const MAX_INLINE_ARRAY: usize = 1024;

/// What to include.
#[derive(Clone, Debug, Default)]
pub struct ShowOptions {
    /// Keep long arrays (the vocabulary, merges) in the metadata map.
    pub verbose: bool,
    /// Add each tensor's name, type, shape, offset and size.
    pub tensors: bool,
}

/// Text from the manifest's layers (absent when inspecting a bare file).
#[derive(Clone, Debug, Default)]
pub struct Layers {
    /// The model's name (`gemma3:270m`).
    pub name: Option<String>,
    /// The license layer.
    pub license: Option<String>,
    /// The template layer (a Go template).
    pub template: Option<String>,
    /// The system prompt layer.
    pub system: Option<String>,
    /// The params layer: JSON runtime options (`{"stop":[…],"temperature":0.7}`).
    pub params: Option<String>,
    /// Whether the manifest has a projector layer (vision).
    pub projector: bool,
    /// What the template the model renders with supports (`tools`,
    /// `insert`, `thinking`): the `template` crate reads it
    /// (`template::template_capabilities`); this crate does not parse
    /// templates.
    pub template_caps: Vec<&'static str>,
}

/// Builds the `ollama show` answer for one model as a JSON object. Keys, in
/// order: `name` (when known), `architecture`, `parameters`,
/// `parameter_count`, `context_length`, `embedding_length`, `quantization`,
/// `capabilities`, `license`, `template`, `system`, `options`, `version`,
/// `metadata`, and with [`ShowOptions::tensors`] `data_offset` and `tensors`.
///
/// The template is the template layer, or without one the GGUF's
/// `tokenizer.chat_template`; capabilities follow Ollama's rules
/// (see [`capabilities`]). A params layer that is not a JSON object is an
/// error naming it.
pub fn inspect(
    g: &Gguf<'_>,
    layers: &Layers,
    opts: &ShowOptions,
) -> Result<Map<String, Json>, Error> {
    let options = match &layers.params {
        None => Json::Null,
        Some(text) => match serde_json::from_str::<Json>(text) {
            Ok(v @ Json::Object(_)) => v,
            Ok(_) => return Err(Error::invalid("params layer", "is not a JSON object", None)),
            Err(e) => return Err(Error::invalid("params layer", e.to_string(), None)),
        },
    };
    let template = layers
        .template
        .as_deref()
        .or_else(|| g.get_str("tokenizer.chat_template"));
    let n = g.parameter_count();
    let mut out = Map::new();
    if let Some(name) = &layers.name {
        out.insert("name".into(), json!(name));
    }
    out.insert("architecture".into(), json!(g.architecture()));
    out.insert("parameters".into(), json!(format_parameter_count(n)));
    out.insert("parameter_count".into(), json!(n));
    out.insert("context_length".into(), json!(g.arch_u64("context_length")));
    out.insert(
        "embedding_length".into(),
        json!(g.arch_u64("embedding_length")),
    );
    out.insert(
        "quantization".into(),
        json!(g.file_type().map(|f| f.name())),
    );
    out.insert(
        "capabilities".into(),
        json!(capabilities(g, &layers.template_caps, layers.projector)),
    );
    out.insert("license".into(), json!(layers.license));
    out.insert("template".into(), json!(template));
    out.insert("system".into(), json!(layers.system));
    out.insert("options".into(), options);
    out.insert("version".into(), json!(g.version()));
    let mut md = Map::new();
    for (k, v) in g.metadata() {
        md.insert((*k).to_string(), to_json(v, opts.verbose));
    }
    out.insert("metadata".into(), Json::Object(md));
    if opts.tensors {
        out.insert("data_offset".into(), json!(g.data_offset()));
        let ts: Vec<Json> = g
            .tensors()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "type": t.ggml_type.to_string(),
                    "shape": t.dims,
                    "offset": t.offset,
                    "bytes": t.n_bytes,
                })
            })
            .collect();
        out.insert("tensors".into(), Json::Array(ts));
    }
    Ok(out)
}

/// Ollama's capabilities: `embedding` when `<arch>.pooling_type` exists,
/// else `completion`; `vision` with a projector layer or `<arch>.vision.*`
/// keys; then `template_caps`, what the model's template supports.
pub fn capabilities(
    g: &Gguf<'_>,
    template_caps: &[&'static str],
    projector: bool,
) -> Vec<&'static str> {
    let mut caps = Vec::new();
    caps.push(if g.arch_get("pooling_type").is_some() {
        "embedding"
    } else {
        "completion"
    });
    let vision_prefix = g.architecture().map(|a| format!("{a}.vision."));
    let vision_keys =
        vision_prefix.is_some_and(|p| g.metadata().iter().any(|(k, _)| k.starts_with(&p)));
    if projector || vision_keys {
        caps.push("vision");
    }
    caps.extend(template_caps);
    caps
}

/// `s` with control characters escaped (`\n`, `\u{1b}`), for terminals.
fn escape_controls(s: &str) -> String {
    let esc = |c: char| {
        if c.is_control() {
            c.escape_default().to_string()
        } else {
            c.to_string()
        }
    };
    s.chars().map(esc).collect()
}

/// One metadata value as JSON; arrays longer than [`MAX_INLINE_ARRAY`] are
/// `null` unless `verbose`. Floats keep their shortest decimal form; NaN and
/// infinities become `null`.
pub fn to_json(v: &Value<'_>, verbose: bool) -> Json {
    match v {
        Value::Array(a) if !verbose && a.len() > MAX_INLINE_ARRAY => Json::Null,
        Value::Array(a) => Json::Array(a.iter().map(|x| to_json(&x, verbose)).collect()),
        Value::Str(s) => json!(s),
        Value::Bool(b) => json!(b),
        Value::F32(f) => format!("{f}")
            .parse::<f64>()
            .ok()
            .map_or(Json::Null, Json::from),
        Value::F64(f) => Json::from(*f),
        v => v
            .as_u64()
            .map(Json::from)
            .or_else(|| v.as_i64().map(Json::from))
            .unwrap_or(Json::Null),
    }
}

/// Renders an [`inspect`] answer the way `ollama show` prints it: Model,
/// Capabilities, Parameters, System and License sections (License and
/// System cut to their first two lines, as Ollama does); with
/// `opts.verbose` a Metadata section (long arrays cut to their first items),
/// and with `opts.tensors` a Tensors section, as `ollama show -v` adds them.
pub fn table(info: &Map<String, Json>, opts: &ShowOptions) -> String {
    let mut out = String::new();
    let get = |k: &str| info.get(k).filter(|v| !v.is_null());
    // File text goes to a terminal: control characters (newlines, ESC) are escaped.
    let plain = |v: &Json| match v {
        Json::String(s) => escape_controls(s),
        v => escape_controls(&v.to_string()),
    };
    let mut section = |title: &str, rows: Vec<(String, String)>| {
        if rows.is_empty() {
            return;
        }
        let esc = |(k, v): (String, String)| (escape_controls(&k), escape_controls(&v));
        let rows: Vec<(String, String)> = rows.into_iter().map(esc).collect();
        let w = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        out.push_str(&format!("  {title}\n"));
        for (k, v) in rows {
            let line = if k.is_empty() {
                format!("    {v}")
            } else {
                format!("    {k:<w$}    {v}")
            };
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push('\n');
    };
    let model_rows = [
        ("architecture", "architecture"),
        ("parameters", "parameters"),
        ("context length", "context_length"),
        ("embedding length", "embedding_length"),
        ("quantization", "quantization"),
    ];
    section(
        "Model",
        model_rows
            .iter()
            .filter_map(|(label, k)| get(k).map(|v| (label.to_string(), plain(v))))
            .collect(),
    );
    let caps = get("capabilities")
        .and_then(Json::as_array)
        .map(|c| c.iter().map(|v| (String::new(), plain(v))).collect());
    section("Capabilities", caps.unwrap_or_default());
    let mut params = Vec::new();
    if let Some(Json::Object(o)) = get("options") {
        for (k, v) in o {
            match v {
                Json::Array(items) => {
                    params.extend(items.iter().map(|i| (k.clone(), i.to_string())))
                }
                v => params.push((k.clone(), plain(v))),
            }
        }
    }
    section("Parameters", params);
    for (title, key) in [("System", "system"), ("License", "license")] {
        let Some(text) = get(key).and_then(Json::as_str) else {
            continue;
        };
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut rows: Vec<(String, String)> = lines
            .iter()
            .take(2)
            .map(|l| (String::new(), l.to_string()))
            .collect();
        if lines.len() > 2 {
            rows.push((String::new(), "...".into()));
        }
        section(title, rows);
    }
    if opts.verbose {
        let md = get("metadata").and_then(Json::as_object);
        let short = |v: &Json| match v {
            Json::Array(a) if a.len() > 4 => {
                let head: Vec<String> = a.iter().take(3).map(&plain).collect();
                format!("[{} ...+{} more]", head.join(" "), a.len() - 3)
            }
            Json::String(t) if t.chars().count() > 60 => {
                format!(
                    "{}...",
                    plain(&Json::from(t.chars().take(57).collect::<String>()))
                )
            }
            v => plain(v),
        };
        let rows = md.map(|m| m.iter().map(|(k, v)| (k.clone(), short(v))).collect());
        section("Metadata", rows.unwrap_or_default());
    }
    if opts.tensors {
        let ts = get("tensors")
            .and_then(Json::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let w = ts
            .iter()
            .map(|t| plain(&t["type"]).len())
            .max()
            .unwrap_or(0);
        let row = |t: &Json| {
            (
                plain(&t["name"]),
                format!("{:<w$}    {}", plain(&t["type"]), t["shape"]),
            )
        };
        section("Tensors", ts.iter().map(row).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_layout() {
        let info = json!({
            "architecture": "llama", "parameters": "135M", "context_length": 8192,
            "embedding_length": 576, "quantization": "Q4_1",
            "capabilities": ["completion", "tools"],
            "options": {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2},
            "license": "Apache License\nVersion 2.0\n\nmore\n", "system": null,
        });
        let t = table(info.as_object().unwrap(), &ShowOptions::default());
        let want = "  Model
    architecture        llama
    parameters          135M
    context length      8192
    embedding length    576
    quantization        Q4_1

  Capabilities
    completion
    tools

  Parameters
    stop           \"<|im_start|>\"
    stop           \"<|im_end|>\"
    temperature    0.2

  License
    Apache License
    Version 2.0
    ...

";
        assert_eq!(t, want, "\n--- got ---\n{t}--- want ---\n{want}");

        let more = json!({
            "architecture": "llama",
            "metadata": {"general.name": "tiny", "tokenizer.ggml.tokens": ["a", "b", "c", "d", "e"]},
            "tensors": [{"name": "output.weight", "type": "Q4_K", "shape": [256, 8], "offset": 0, "bytes": 1152}],
        });
        let opts = ShowOptions {
            verbose: true,
            tensors: true,
        };
        let t = table(more.as_object().unwrap(), &opts);
        let tail = "  Metadata
    general.name             tiny
    tokenizer.ggml.tokens    [a b c ...+2 more]

  Tensors
    output.weight    Q4_K    [256,8]

";
        assert!(t.ends_with(tail), "{t}");

        // terminal escapes from the file are shown, not obeyed
        let evil = json!({"license": "MIT\u{1b}[2J", "metadata": {"k\u{7}": "a\nb"}});
        let t = table(evil.as_object().unwrap(), &opts);
        assert!(
            t.contains("MIT\\u{1b}[2J") && t.contains("k\\u{7}    a\\nb"),
            "{t}"
        );
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
    }
}
