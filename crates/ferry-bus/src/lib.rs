//! The bus joining the connection layer (gateways) and the logic layer.
//!
//! Gateways send [`BusRequest`]s (a client's command, forwarded without being understood)
//! and [`LinkEvent`]s (a link logged in or went away) to logic; logic sends [`Push`]es to
//! the gateway that holds a user's links. Two implementations share this trait:
//! [`InProcBus`] (one process, `ferry serve`) and NATS (a cluster). The bus must not
//! interpret what it carries, hold user data or retry: it moves values between roles.

mod nats;
pub mod nodes;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;

pub use ferry_proto::bus::{BusRequest, BusResponse, LinkEvent, Push};
pub use nats::{NatsBus, NatsConfig};

/// How long is left (ms) until the gateway that sent `req` stops waiting for its answer:
/// `None` without a deadline (the in-process bus sets none), `Some(0)` once it passed.
/// Past it, the gateway has answered its client (`UNAVAILABLE`) or sent an idempotent
/// request elsewhere: a handler must not apply the request any more.
pub fn deadline_left_ms(req: &BusRequest) -> Option<u64> {
    (req.deadline_ms != 0).then(|| req.deadline_ms.saturating_sub(nats::unix_ms()))
}

/// Bus failures.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("no logic node is serving requests")]
    NoLogic,
    #[error("gateway {0} is not attached")]
    NoGateway(String),
    #[error("bus transport: {0}")]
    Transport(String),
    #[error("bus request timed out")]
    Timeout,
}

impl BusError {
    /// What a client is told to wait before retrying a request that met this error.
    pub fn retry_after_ms(&self) -> u32 {
        match self {
            // Another node (or this one, back) answers within a second or so.
            BusError::Timeout | BusError::NoLogic | BusError::Transport(_) => 1_000,
            BusError::NoGateway(_) => 0,
        }
    }
}

/// The logic side: answers requests and hears about links.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, req: BusRequest) -> BusResponse;
    async fn link_event(&self, ev: LinkEvent);
    /// A gateway went away (left, restarted, or fell silent): forget every route through
    /// it. Only distributed buses call this; in one process a gateway's links all send
    /// their own offline events.
    async fn gateway_down(&self, _gateway_id: &str) {}
    /// Working at its limit: a cluster's gateways send elsewhere while they can.
    fn overloaded(&self) -> bool {
        false
    }
}

/// The gateway side: takes pushes for the links it holds. Must not block.
pub trait PushSink: Send + Sync + 'static {
    fn push(&self, push: Push);
}

/// The bus.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Gateway → logic: one request, one response.
    async fn request(&self, req: BusRequest) -> Result<BusResponse, BusError>;
    /// Gateway → logic: a presence change. Delivered in order per gateway.
    async fn link_event(&self, ev: LinkEvent) -> Result<(), BusError>;
    /// Logic → one gateway.
    async fn push(&self, gateway_id: &str, push: Push) -> Result<(), BusError>;

    /// A logic node starts serving requests.
    fn serve_logic(&self, handler: Arc<dyn Handler>);
    /// A gateway starts taking pushes under `gateway_id`.
    fn attach_gateway(&self, gateway_id: &str, sink: Arc<dyn PushSink>);
    fn detach_gateway(&self, gateway_id: &str);
}

/// Everything in one process: requests are direct calls, pushes are direct calls into
/// the gateway's sink. No encoding, no copies.
#[derive(Default)]
pub struct InProcBus {
    logic: RwLock<Option<Arc<dyn Handler>>>,
    gateways: RwLock<HashMap<String, Arc<dyn PushSink>>>,
}

impl InProcBus {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn logic(&self) -> Result<Arc<dyn Handler>, BusError> {
        self.logic.read().clone().ok_or(BusError::NoLogic)
    }
}

#[async_trait]
impl Bus for InProcBus {
    async fn request(&self, req: BusRequest) -> Result<BusResponse, BusError> {
        Ok(self.logic()?.handle(req).await)
    }

    async fn link_event(&self, ev: LinkEvent) -> Result<(), BusError> {
        self.logic()?.link_event(ev).await;
        Ok(())
    }

    async fn push(&self, gateway_id: &str, push: Push) -> Result<(), BusError> {
        let sink = self
            .gateways
            .read()
            .get(gateway_id)
            .cloned()
            .ok_or_else(|| BusError::NoGateway(gateway_id.to_owned()))?;
        sink.push(push);
        Ok(())
    }

    fn serve_logic(&self, handler: Arc<dyn Handler>) {
        *self.logic.write() = Some(handler);
    }

    fn attach_gateway(&self, gateway_id: &str, sink: Arc<dyn PushSink>) {
        self.gateways.write().insert(gateway_id.to_owned(), sink);
    }

    fn detach_gateway(&self, gateway_id: &str) {
        self.gateways.write().remove(gateway_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    struct Echo;
    #[async_trait]
    impl Handler for Echo {
        async fn handle(&self, req: BusRequest) -> BusResponse {
            BusResponse {
                cmd: req.cmd | 0x80,
                body: req.body,
                ..Default::default()
            }
        }
        async fn link_event(&self, _ev: LinkEvent) {}
    }

    #[derive(Default)]
    struct Sink(Mutex<Vec<Push>>);
    impl PushSink for Sink {
        fn push(&self, push: Push) {
            self.0.lock().push(push);
        }
    }

    #[tokio::test]
    async fn routes_both_ways() {
        let bus = InProcBus::new();
        let req = BusRequest {
            cmd: 3,
            body: vec![1, 2].into(),
            ..Default::default()
        };
        assert!(matches!(
            bus.request(req.clone()).await,
            Err(BusError::NoLogic)
        ));
        bus.serve_logic(Arc::new(Echo));
        let resp = bus.request(req).await.unwrap();
        assert_eq!((resp.cmd, &resp.body[..]), (0x83, &[1u8, 2][..]));

        let sink = Arc::new(Sink::default());
        bus.attach_gateway("gw1", sink.clone());
        bus.push(
            "gw1",
            Push {
                user_id: 9,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(sink.0.lock()[0].user_id, 9);
        bus.detach_gateway("gw1");
        assert!(matches!(
            bus.push("gw1", Push::default()).await,
            Err(BusError::NoGateway(_))
        ));
    }
}
