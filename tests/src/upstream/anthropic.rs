//! Anthropic API shapes: messages and token counting, complete enough for the official
//! `anthropic` SDKs to parse.

use serde_json::{Value, json};

use super::handler::{Call, Reply, named_event, pieces, sentence};

/// The error event of `error-event` and `error-after-content` on `/v1/messages`.
pub(super) const ERROR_EVENT: &[u8] = concat!(
    "event: error\n",
    r#"data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    "\n\n"
)
.as_bytes();

/// `POST /v1/messages`.
pub(super) fn message(call: &Call<'_>) -> Reply {
    let message = |content: Value, stop_reason: Value, output_tokens: u64| {
        json!({
            "id": format!("msg_krouter{:012}", call.id),
            "type": "message",
            "role": "assistant",
            "content": content,
            "model": call.model,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {"input_tokens": 11, "output_tokens": output_tokens},
        })
    };
    if !call.stream {
        return Reply::Json(message(
            json!([{"type": "text", "text": sentence(call.model)}]),
            json!("end_turn"),
            7,
        ));
    }

    let start = named_event(
        "message_start",
        &json!({"type": "message_start", "message": message(json!([]), Value::Null, 1)}),
    );
    let finish = [
        named_event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 7},
            }),
        ),
        named_event("message_stop", &json!({"type": "message_stop"})),
    ];
    if !call.content {
        return Reply::Events {
            events: [start].into_iter().chain(finish).collect(),
            first_content: None,
        };
    }

    let mut events = vec![
        start,
        named_event(
            "content_block_start",
            &json!({
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }),
        ),
    ];
    let first_content = Some(events.len());
    for piece in pieces(call.model) {
        events.push(named_event(
            "content_block_delta",
            &json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }),
        ));
    }
    events.push(named_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.extend(finish);
    Reply::Events {
        events,
        first_content,
    }
}

/// `POST /v1/messages/count_tokens`.
pub(super) fn count_tokens() -> Reply {
    Reply::Json(json!({"input_tokens": 11}))
}
