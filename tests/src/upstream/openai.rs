//! OpenAI API shapes: chat completions, embeddings, the Responses API and the model list,
//! complete enough for the official `openai` SDKs to parse.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::{Value, json};

use super::handler::{Call, Reply, data_event, named_event, pieces, sentence};

/// The error event of `error-event` and `error-after-content` on the OpenAI routes.
pub(super) const ERROR_EVENT: &[u8] = concat!(
    r#"data: {"error":{"message":"upstream overloaded","type":"server_error","code":"overloaded"}}"#,
    "\n\n"
)
.as_bytes();

/// The one embedding the mock knows.
const EMBEDDING: [f32; 3] = [0.1, 0.2, 0.3];
/// The last event of a chat completion stream.
const DONE: &[u8] = b"data: [DONE]\n\n";

/// `POST /v1/chat/completions`.
pub(super) fn chat_completion(call: &Call<'_>) -> Reply {
    let id = format!("chatcmpl-krouter{:012}", call.id);
    let usage = json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18});
    if !call.stream {
        return Reply::Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": call.created,
            "model": call.model,
            "system_fingerprint": "fp_krouter_demo",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": sentence(call.model),
                    "refusal": null,
                    "annotations": [],
                },
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
        }));
    }

    let include_usage = call
        .request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let chunk = |choices: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": call.created,
            "model": call.model,
            "system_fingerprint": "fp_krouter_demo",
            "choices": choices,
        });
        if include_usage && let Some(object) = chunk.as_object_mut() {
            object.insert("usage".to_owned(), Value::Null);
        }
        chunk
    };
    let choice = |delta: Value, finish_reason: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]);
    if !call.content {
        return Reply::Events {
            events: vec![
                data_event(&chunk(choice(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                ))),
                Bytes::from_static(DONE),
            ],
            first_content: None,
        };
    }

    let mut events = vec![data_event(&chunk(choice(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )))];
    let first_content = Some(events.len());
    for piece in pieces(call.model) {
        events.push(data_event(&chunk(choice(
            json!({"content": piece}),
            Value::Null,
        ))));
    }
    events.push(data_event(&chunk(choice(json!({}), json!("stop")))));
    if include_usage {
        let mut last = chunk(json!([]));
        if let Some(object) = last.as_object_mut() {
            object.insert("usage".to_owned(), usage);
        }
        events.push(data_event(&last));
    }
    events.push(Bytes::from_static(DONE));
    Reply::Events {
        events,
        first_content,
    }
}

/// `POST /v1/embeddings`: one embedding per input string (or token list) when `input` is an
/// array, base64 when `encoding_format` asks for it.
pub(super) fn embeddings(call: &Call<'_>) -> Reply {
    let count = match call.request.get("input") {
        Some(Value::Array(inputs))
            if inputs
                .first()
                .is_some_and(|first| first.is_string() || first.is_array()) =>
        {
            inputs.len()
        }
        _ => 1,
    };
    let embedding = if call.request.get("encoding_format").and_then(Value::as_str) == Some("base64")
    {
        let bytes: Vec<u8> = EMBEDDING.iter().flat_map(|f| f.to_le_bytes()).collect();
        Value::from(STANDARD.encode(bytes))
    } else {
        json!(EMBEDDING)
    };
    let data: Vec<Value> = (0..count)
        .map(|index| json!({"object": "embedding", "index": index, "embedding": embedding}))
        .collect();
    Reply::Json(json!({
        "object": "list",
        "data": data,
        "model": call.model,
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }))
}

/// `POST /v1/responses`.
pub(super) fn response(call: &Call<'_>) -> Reply {
    let text = sentence(call.model);
    let message_id = format!("msg_krouter{:012}", call.id);
    let message = |status: &str, content: Value| {
        json!({
            "id": message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        })
    };
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
    let done = message("completed", json!([part(&text)]));
    let usage = json!({
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 18,
    });
    if !call.stream {
        return Reply::Json(response_object(call, "completed", json!([done]), usage));
    }

    let in_progress = response_object(call, "in_progress", json!([]), Value::Null);
    let mut sequence = 0_u64;
    let mut events = Vec::new();
    // Appends an event and returns its index.
    let mut push = |kind: &str, mut data: Value| {
        if let Some(object) = data.as_object_mut() {
            object.insert("type".to_owned(), Value::from(kind));
            object.insert("sequence_number".to_owned(), Value::from(sequence));
        }
        sequence += 1;
        let index = events.len();
        events.push(named_event(kind, &data));
        index
    };
    let at = |mut data: Value| {
        if let Some(object) = data.as_object_mut() {
            object.insert("item_id".to_owned(), Value::from(message_id.as_str()));
            object.insert("output_index".to_owned(), Value::from(0));
            object.insert("content_index".to_owned(), Value::from(0));
        }
        data
    };

    push("response.created", json!({"response": in_progress}));
    if !call.content {
        let empty = response_object(call, "completed", json!([]), usage);
        push("response.completed", json!({"response": empty}));
        return Reply::Events {
            events,
            first_content: None,
        };
    }
    push("response.in_progress", json!({"response": in_progress}));
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": message("in_progress", json!([]))}),
    );
    push("response.content_part.added", at(json!({"part": part("")})));
    let mut first_content = None;
    for piece in pieces(call.model) {
        let index = push(
            "response.output_text.delta",
            at(json!({"delta": piece, "logprobs": []})),
        );
        first_content.get_or_insert(index);
    }
    push(
        "response.output_text.done",
        at(json!({"text": text, "logprobs": []})),
    );
    push(
        "response.content_part.done",
        at(json!({"part": part(&text)})),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": done}),
    );
    let completed = response_object(call, "completed", json!([done]), usage);
    push("response.completed", json!({"response": completed}));
    Reply::Events {
        events,
        first_content,
    }
}

/// `GET /v1/models`.
pub(super) fn models() -> Value {
    let model = |id: &str| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "krouter-demo"});
    json!({
        "object": "list",
        "data": [model("gpt-4o-mini"), model("text-embedding-3-small"), model("claude-3-5-haiku-latest")],
    })
}

/// A Responses API `response` object with the request's settings echoed back.
fn response_object(call: &Call<'_>, status: &str, output: Value, usage: Value) -> Value {
    let setting = |name: &str, default: Value| call.request.get(name).cloned().unwrap_or(default);
    json!({
        "id": format!("resp_krouter{:012}", call.id),
        "object": "response",
        "created_at": call.created,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": null,
        "instructions": setting("instructions", Value::Null),
        "max_output_tokens": setting("max_output_tokens", Value::Null),
        "model": call.model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": setting("previous_response_id", Value::Null),
        "reasoning": {"effort": null, "summary": null},
        "service_tier": "default",
        "store": setting("store", Value::Bool(true)),
        "temperature": setting("temperature", json!(1.0)),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": setting("top_p", json!(1.0)),
        "truncation": "disabled",
        "usage": usage,
        "user": null,
        "metadata": setting("metadata", json!({})),
    })
}
