//! The behaviours a request's `model` picks (the table in the module doc of `upstream.rs`),
//! parsed from the model name; what each sends is up to the handler.

use std::time::Duration;

use hyper::StatusCode;

/// The most digits a number in a model name may have (`u64::MAX` has 20).
const MAX_DIGITS: usize = 20;

/// What the request's model asks the mock to do (the table in the module doc of
/// `upstream.rs` says what each sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Behaviour {
    /// A 200 answer, its body sent as the delivery says.
    Answer(Delivery),
    Fail500,
    /// `fail-<status>`, 501 to 599.
    FailStatus(StatusCode),
    /// `fail-429` (1 second), `fail-429-<secs>` and `fail-429-none` (no `retry-after`).
    Fail429(Option<u64>),
    Fail400,
    /// Waits, then answers normally.
    Slow(Duration),
    Hang,
    Drop,
    /// `flaky-<n>` and `flaky500-<n>`: the first `failures` requests with this model get
    /// `fault`, later ones a normal answer.
    Flaky {
        failures: u64,
        fault: Fault,
    },
    BigError,
    Redirect,
}

/// How the body of a 200 answer is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// All of it, at once (a model without a behaviour).
    Whole,
    /// `stream-gap-<ms>`.
    Gaps(Duration),
    /// `stream-cut`.
    Cut,
    /// `empty-stream`.
    Empty,
    /// `no-content-stream`.
    NoContent,
    /// `error-event`.
    ErrorEvent,
    /// `stall`.
    Stall,
    /// `stall-after-content`.
    StallAfterContent,
    /// `error-after-content`.
    ErrorAfterContent,
}

/// How a `flaky` model fails while it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// As `drop`.
    Drop,
    /// 503 with an error body.
    Unavailable,
}

// === impl Behaviour ===

impl Behaviour {
    /// A normal answer.
    pub(super) const NORMAL: Self = Self::Answer(Delivery::Whole);

    /// The behaviour `model` asks for ([`NORMAL`](Self::NORMAL) for any model not in the
    /// table).
    pub(super) fn of(model: &str) -> Self {
        match model {
            "fail-500" => Self::Fail500,
            "fail-429" => Self::Fail429(Some(1)),
            "fail-429-none" => Self::Fail429(None),
            "fail-400" => Self::Fail400,
            "hang" => Self::Hang,
            "drop" => Self::Drop,
            "big-error" => Self::BigError,
            "redirect" => Self::Redirect,
            "stream-cut" => Self::Answer(Delivery::Cut),
            "empty-stream" => Self::Answer(Delivery::Empty),
            "no-content-stream" => Self::Answer(Delivery::NoContent),
            "error-event" => Self::Answer(Delivery::ErrorEvent),
            "stall" => Self::Answer(Delivery::Stall),
            "stall-after-content" => Self::Answer(Delivery::StallAfterContent),
            "error-after-content" => Self::Answer(Delivery::ErrorAfterContent),
            _ => Self::numbered(model).unwrap_or(Self::NORMAL),
        }
    }

    /// The behaviours whose model ends in `-<number>`; `None` for any other model.
    fn numbered(model: &str) -> Option<Self> {
        let (name, digits) = model.rsplit_once('-')?;
        if digits.is_empty()
            || digits.len() > MAX_DIGITS
            || !digits.bytes().all(|byte| byte.is_ascii_digit())
        {
            return None;
        }
        let number = digits.parse::<u64>().ok()?;
        let behaviour = match name {
            "slow" => Self::Slow(Duration::from_millis(number)),
            "stream-gap" => Self::Answer(Delivery::Gaps(Duration::from_millis(number))),
            "fail" => match number {
                500 => Self::Fail500,
                501..=599 => {
                    Self::FailStatus(StatusCode::from_u16(u16::try_from(number).ok()?).ok()?)
                }
                _ => return None,
            },
            "fail-429" => Self::Fail429(Some(number)),
            "flaky" => Self::Flaky {
                failures: number,
                fault: Fault::Drop,
            },
            "flaky500" => Self::Flaky {
                failures: number,
                fault: Fault::Unavailable,
            },
            _ => return None,
        };
        Some(behaviour)
    }
}
