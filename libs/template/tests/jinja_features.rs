//! Jinja features Hugging Face chat templates use. Expected strings were
//! worked out by hand and agree with Python's jinja2 3.1
//! (`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`
//! with HF's `tojson` and `strftime_now`).

mod common;

use common::{eq, req, text, untrusted};
use template::{render_chat, ChatTemplate, Message, Request, ToolCall};

/// A Qwen2.5-style template: tools as JSON lines, tool calls, tool results
/// grouped into one user turn, `namespace`, `loop.previtem`-free lookback.
const QWEN25: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- for tool_call in message.tool_calls %}
            {%- set tool_call = tool_call.function %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

#[test]
fn qwen25_tools() {
    let tools = serde_json::json!([{"type": "function", "function": {"name": "get_time", "description": "Time in <tz>", "parameters": {"type": "object", "properties": {}}}}]);
    let r = Request {
        tools: Some(tools),
        messages: vec![
            Message::user("Time?"),
            Message {
                role: "assistant".into(),
                tool_calls: vec![ToolCall {
                    id: None,
                    name: "get_time".into(),
                    arguments: serde_json::json!({"tz": "UTC", "fmt": 24}),
                }],
                ..Message::default()
            },
            Message::new("tool", "12:00"),
            Message::new("tool", "noon"),
        ],
        ..Request::default()
    };
    let t = ChatTemplate::Jinja(QWEN25.into());
    let out = render_chat(&t, &r).unwrap();
    eq(
        &out.text(),
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n<tools>\n\
         {\"type\": \"function\", \"function\": {\"name\": \"get_time\", \"description\": \"Time in <tz>\", \"parameters\": {\"type\": \"object\", \"properties\": {}}}}\n\
         </tools><|im_end|>\n\
         <|im_start|>user\nTime?<|im_end|>\n\
         <|im_start|>assistant\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"UTC\", \"fmt\": 24}}\n</tool_call><|im_end|>\n\
         <|im_start|>user\n<tool_response>\n12:00\n</tool_response>\n<tool_response>\nnoon\n</tool_response><|im_end|>\n\
         <|im_start|>assistant\n",
    );
    let u = untrusted(&out);
    assert!(
        u.contains(&"Time in <tz>") && u.contains(&"12:00") && u.contains(&"get_time"),
        "{u:?}"
    );
}

#[test]
fn python_methods_loop_controls_and_dates() {
    let t = ChatTemplate::Jinja(
        r#"{%- set ns = namespace(n=0) -%}
{%- for m in messages -%}
{%- if m.content.startswith('skip') %}{% continue %}{% endif -%}
{%- if m.content.endswith('stop') %}{% break %}{% endif -%}
{%- set ns.n = ns.n + 1 -%}
{{ m.content.split('</think>')[-1].lstrip('\n').upper() }}|{{ m.content.replace('a', 'A') }}|{{ m.get('thinking', 'none') }};
{%- endfor %}
{{ ns.n }} {{ strftime_now('%d %b %Y') }} {{ bos_token }}{{ eos_token }}"#
            .into(),
    );
    let r = Request {
        now: Some(1_722_000_309),
        bos_token: "<s>".into(),
        eos_token: "</s>".into(),
        ..req(&[
            ("user", "abc"),
            ("user", "skip me"),
            ("assistant", "reason</think>\n\nanswer"),
            ("user", "now stop"),
            ("user", "never"),
        ])
    };
    eq(
        &text(&t, &r),
        "ABC|Abc|none;ANSWER|reAson</think>\n\nAnswer|none;2 26 Jul 2024 <s></s>",
    );
}

#[test]
fn raise_exception_is_an_error_naming_the_message() {
    let t = ChatTemplate::Jinja(
        "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok".into(),
    );
    assert_eq!(text(&t, &req(&[("user", "x")])), "ok");
    let e = render_chat(&t, &req(&[("assistant", "x")])).unwrap_err();
    assert!(e.to_string().contains("first must be user"), "{e}");
}

#[test]
fn trim_blocks_and_lstrip_blocks_as_hugging_face() {
    // trim_blocks eats the newline after a block tag; lstrip_blocks the
    // indentation before one; a single trailing newline is dropped.
    let t = ChatTemplate::Jinja(
        "{% for m in messages %}\n    {% if m.role == 'user' %}\nU:{{ m.content }}\n    {% endif %}\n{% endfor %}\nend\n".into(),
    );
    eq(
        &text(&t, &req(&[("user", "a"), ("assistant", "b")])),
        "U:a\nend",
    );
}

/// A Llama 3.1-shaped template: `is defined` defaults, `strftime_now`,
/// `messages[1:]` reassignment, `tojson(indent=4)`, `'tool_calls' in message`.
#[test]
fn llama31_shape() {
    let t = ChatTemplate::Jinja(include_str!("data/llama31-shape.jinja").into());
    let base = Request {
        now: Some(1_722_000_309),
        bos_token: "<|begin_of_text|>".into(),
        ..Request::default()
    };
    let r = Request {
        messages: vec![Message::system(" Be nice. "), Message::user("Hi ")],
        ..base.clone()
    };
    eq(
        &text(&t, &r),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n\
         Be nice.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n",
    );
    let r = Request {
        tools: Some(
            serde_json::json!([{"type": "function", "function": {"name": "f",
            "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}]),
        ),
        messages: vec![
            Message::user("Call f"),
            Message {
                role: "assistant".into(),
                tool_calls: vec![ToolCall {
                    id: None,
                    name: "f".into(),
                    arguments: serde_json::json!({"x": 1}),
                }],
                ..Message::default()
            },
            Message::new("tool", "2"),
        ],
        ..base
    };
    eq(
        &text(&t, &r),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\n\
         Given the following functions, please respond with a JSON for a function call \
         with its proper arguments that best answers the given prompt.\n\n\
         {\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"f\",\n        \
         \"parameters\": {\n            \"type\": \"object\",\n            \"properties\": {\n                \
         \"x\": {\n                    \"type\": \"integer\"\n                }\n            }\n        }\n    }\n}\n\n\
         Call f<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n\
         {\"name\": \"f\", \"parameters\": {\"x\": 1}}<|eot_id|>\
         <|start_header_id|>ipython<|end_header_id|>\n\n2<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n",
    );
}
