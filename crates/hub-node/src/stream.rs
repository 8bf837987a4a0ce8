//! A streaming chat as a pull-based handle. Each `next()` polls the hub's stream once, so the
//! upstream body is read only as fast as JS asks for chunks: nothing is read ahead (the channel
//! between upstream and JS holds one item, the one being handed over), and a slow consumer slows
//! the upstream read through TCP flow control.
//!
//! `cancel()` (from `break`, `return()` or an `AbortSignal` in the wrapper) drops the hub's
//! stream: hub-core then closes the upstream connection and records the call as `cancelled` with
//! what was delivered. Dropping the handle unconsumed (garbage collection) does the same.

use std::sync::Arc;

use futures::StreamExt;
use hub_core::types::ChatRequest;
use hub_core::{Hub, HubStream, StreamItem};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde_json::json;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::errors::hub_err;
use crate::{CallAuth, call_context};

enum State {
    /// Not started: the first `next()` authenticates, routes and awaits the first event.
    Pending {
        hub: Hub,
        auth: Box<CallAuth>,
        req: Box<ChatRequest>,
    },
    Open(HubStream),
    Done,
}

/// One streaming chat.
#[napi]
pub struct NativeStream {
    state: Arc<Mutex<State>>,
    cancel: CancellationToken,
}

impl NativeStream {
    pub(crate) fn pending(hub: Hub, auth: CallAuth, req: ChatRequest) -> NativeStream {
        NativeStream {
            state: Arc::new(Mutex::new(State::Pending {
                hub,
                auth: Box::new(auth),
                req: Box::new(req),
            })),
            cancel: CancellationToken::new(),
        }
    }
}

fn item_json(item: StreamItem) -> std::result::Result<Option<String>, napi::Error> {
    match item {
        StreamItem::Event(ev) => serde_json::to_string(&ev)
            .map(Some)
            .map_err(|e| napi::Error::from_reason(e.to_string())),
        StreamItem::Done { usage, .. } => {
            Ok(Some(json!({ "type": "done", "usage": usage }).to_string()))
        }
        StreamItem::Error(e) => Err(hub_err(&e)),
    }
}

#[napi]
impl NativeStream {
    /// The next chunk as JSON (a canonical stream event, or `{"type":"done","usage":…}` last,
    /// sent only after the usage record is committed), or null when the stream is over or was
    /// cancelled. A failure rejects (once); later calls resolve null.
    #[napi]
    pub async fn next(&self) -> Result<Option<String>> {
        let mut st = self.state.lock().await;
        loop {
            match &mut *st {
                State::Done => return Ok(None),
                State::Pending { .. } => {
                    let State::Pending { hub, auth, req } =
                        std::mem::replace(&mut *st, State::Done)
                    else {
                        return Ok(None);
                    };
                    let open = async {
                        let ctx = call_context(&hub, *auth).await?;
                        hub.chat_stream(&ctx, *req).await
                    };
                    tokio::select! {
                        biased;
                        () = self.cancel.cancelled() => return Ok(None),
                        opened = open => match opened {
                            Ok(s) => *st = State::Open(s),
                            Err(e) => return Err(hub_err(&e)),
                        },
                    }
                }
                State::Open(s) => {
                    let item = tokio::select! {
                        biased;
                        () = self.cancel.cancelled() => None,
                        item = s.next() => item,
                    };
                    return match item {
                        Some(StreamItem::Event(ev)) => item_json(StreamItem::Event(ev)),
                        Some(last) => {
                            *st = State::Done;
                            item_json(last)
                        }
                        None => {
                            // Cancelled (dropping the stream records it) or ended.
                            *st = State::Done;
                            Ok(None)
                        }
                    };
                }
            }
        }
    }

    /// Cancels the stream: a pending `next()` resolves null, the upstream request is closed, and
    /// the call is recorded with what was delivered. Idempotent.
    #[napi(catch_unwind)]
    pub fn cancel(&self) {
        self.cancel.cancel();
        // With no `next()` in flight, drop the upstream now rather than at garbage collection.
        if let Ok(mut st) = self.state.try_lock() {
            *st = State::Done;
        }
    }
}
