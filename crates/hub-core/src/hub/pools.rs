//! Upstream connection pools: one set per provider, and within it one per HTTPS origin.
//!
//! A pooled client offering `h2` and `http/1.1` by ALPN cannot know, before its first connection
//! to a host is up, whether the host speaks HTTP/2. So a burst of calls to a cold host each opens
//! its own TLS connection; once one of them negotiates `h2`, the calls still waiting for the pool
//! share it, and every other connection already opened is closed again. At 5,000 calls starting
//! at once that was ~3,000 TLS connections held open during the burst (then 50), the handshakes
//! and buffers the hub paid for, and a burst a provider's edge sees as a flood.
//!
//! So an origin learns its protocol once, from one call: the first call to a cold origin (the
//! probe) goes out on a client offering both protocols by ALPN, and the calls arriving meanwhile
//! wait until the probe's connection is up, which is when the protocol is known (the client
//! reports what each new connection negotiated). An origin that speaks HTTP/2 is then called
//! with HTTP/2 by prior knowledge, where the pool opens one connection and every other call waits
//! for it; an origin that speaks only HTTP/1.1 keeps the ALPN client, a connection per call in
//! flight, as HTTP/1.1 needs. Plain-HTTP base URLs never speak HTTP/2 here and have one client.
//!
//! An HTTP/2 upstream also caps the streams open at once on one connection
//! (`SETTINGS_MAX_CONCURRENT_STREAMS`, 100 to 256 at the big providers), and a pooled client keeps
//! every call to a host on its one HTTP/2 connection: calls past the cap wait, without an error,
//! until an earlier stream ends, which for long streams means minutes before a first byte. So an
//! HTTP/2 origin gets a pool per [`STREAMS_PER_POOL`] calls in flight (a `Lease` counts a call
//! until its response or stream is dropped), each with its own connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

use super::OpenError;
use crate::FastMap;
use crate::upstream_http::{Client, ClientOptions, OnConnect};

/// Calls in flight per HTTP/2 pool: the least `SETTINGS_MAX_CONCURRENT_STREAMS` RFC 9113
/// (§6.5.2) asks servers to allow.
pub(crate) const STREAMS_PER_POOL: usize = 100;

/// What an HTTPS origin speaks, as far as the hub knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    /// Nothing learned yet: the next call probes.
    Unknown,
    /// A call is connecting to learn it; others wait.
    Probing,
    H2,
    Http1,
}

type ProtoCell = Arc<watch::Sender<Proto>>;

/// Moves `cell` from `from` to `to`; false (and no change) if it held something else.
fn shift(cell: &ProtoCell, from: Proto, to: Proto) -> bool {
    cell.send_if_modified(|p| {
        let moved = *p == from;
        if moved {
            *p = to;
        }
        moved
    })
}

/// One provider's clients, all with the same connect timeout.
pub(crate) struct Pools {
    connect: Duration,
    extra_roots: Vec<CertificateDer<'static>>,
    /// Plain-HTTP base URLs: HTTP/1.1, a connection per call in flight.
    plain: Client,
    /// HTTPS origins (`scheme://authority` of a base URL).
    origins: parking_lot::RwLock<FastMap<Box<str>, Arc<Origin>>>,
}

struct Origin {
    proto: ProtoCell,
    /// Offers `h2` and `http/1.1`; reports what each new connection negotiated. A probe after the
    /// first gets a fresh one: on this one's pooled connection it would learn nothing.
    alpn: parking_lot::RwLock<Client>,
    probed: std::sync::atomic::AtomicBool,
    /// HTTP/2 by prior knowledge, a pool per [`STREAMS_PER_POOL`] calls in flight (built as
    /// needed, once the origin is known to speak HTTP/2).
    shards: parking_lot::RwLock<Vec<Arc<Shard>>>,
}

struct Shard {
    client: Client,
    in_flight: AtomicUsize,
}

fn client(
    connect: Duration,
    extra_roots: &[CertificateDer<'static>],
    h2_only: bool,
    on_connect: Option<OnConnect>,
) -> Result<Client, OpenError> {
    Client::new(ClientOptions {
        connect_timeout: connect,
        extra_roots: extra_roots.to_vec(),
        h2_only,
        on_connect,
        proxies: Default::default(),
    })
    .map_err(OpenError::Http)
}

/// A provider's client for one call. It may hold a place in an HTTP/2 pool, or the origin's probe:
/// keep it as long as the upstream response (or stream) is read.
pub(crate) struct Lease {
    client: Client,
    shard: Option<Arc<Shard>>,
    probe: Option<ProtoCell>,
}

impl std::ops::Deref for Lease {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(s) = &self.shard {
            s.in_flight.fetch_sub(1, Relaxed);
        }
        // A probe that ends without a connection (it failed to connect, or was dropped first)
        // hands the probe to the next call.
        if let Some(p) = &self.probe {
            shift(p, Proto::Probing, Proto::Unknown);
        }
    }
}

impl Lease {
    fn of(client: &Client) -> Lease {
        Lease {
            client: client.clone(),
            shard: None,
            probe: None,
        }
    }
}

impl Shard {
    /// Takes a place if the pool has one.
    fn try_take(self: &Arc<Shard>) -> Option<Lease> {
        self.in_flight
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < STREAMS_PER_POOL).then_some(n + 1)
            })
            .ok()
            .map(|_| Lease {
                client: self.client.clone(),
                shard: Some(self.clone()),
                probe: None,
            })
    }
}

/// `https://host:port` of an HTTPS base URL; `None` for any other scheme.
fn https_origin(base_url: &str) -> Option<&str> {
    let scheme = base_url.get(..8)?;
    if !scheme.eq_ignore_ascii_case("https://") {
        return None;
    }
    let end = base_url[8..]
        .find(['/', '?', '#'])
        .map_or(base_url.len(), |i| i + 8);
    Some(&base_url[..end])
}

impl Pools {
    pub(crate) fn new(
        connect: Duration,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Pools, OpenError> {
        Ok(Pools {
            connect,
            extra_roots: extra_roots.to_vec(),
            plain: client(connect, extra_roots, false, None)?,
            origins: parking_lot::RwLock::new(FastMap::default()),
        })
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect
    }

    /// The client for a call to `base_url`. A call to an HTTPS origin whose protocol is being
    /// learned waits for that (at most the connect timeout and a second).
    pub(crate) async fn lease(&self, base_url: &str) -> Lease {
        let Some(origin) = https_origin(base_url) else {
            return Lease::of(&self.plain);
        };
        match self.origin(origin) {
            Ok(o) => o.lease(self).await,
            // Built the same way as the plain client, so this does not happen; if it did, the
            // call goes out on the plain client (which speaks TLS too) rather than fail.
            Err(e) => {
                tracing::error!(error = %e, "cannot build an upstream client");
                Lease::of(&self.plain)
            }
        }
    }

    fn origin(&self, origin: &str) -> Result<Arc<Origin>, OpenError> {
        if let Some(o) = self.origins.read().get(origin) {
            return Ok(o.clone());
        }
        let mut origins = self.origins.write();
        if let Some(o) = origins.get(origin) {
            return Ok(o.clone());
        }
        let proto: ProtoCell = Arc::new(watch::Sender::new(Proto::Unknown));
        let o = Arc::new(Origin {
            alpn: parking_lot::RwLock::new(self.origin_client(&proto, false)?),
            probed: std::sync::atomic::AtomicBool::new(false),
            proto,
            shards: parking_lot::RwLock::new(Vec::new()),
        });
        origins.insert(origin.into(), o.clone());
        Ok(o)
    }

    /// A client for one origin whose connections report to `proto`: offering h2 and http/1.1 by
    /// ALPN, or (`h2_only`) HTTP/2 by prior knowledge.
    fn origin_client(&self, proto: &ProtoCell, h2_only: bool) -> Result<Client, OpenError> {
        client(
            self.connect,
            &self.extra_roots,
            h2_only,
            Some(report_proto(proto.clone(), h2_only)),
        )
    }

    /// Pools in use for `origin` and calls in flight on each (for tests and diagnostics).
    #[cfg(test)]
    fn in_flight(&self, origin: &str) -> Vec<usize> {
        self.origins.read().get(origin).map_or_else(Vec::new, |o| {
            o.shards
                .read()
                .iter()
                .map(|s| s.in_flight.load(Relaxed))
                .collect()
        })
    }
}

impl Origin {
    async fn lease(&self, pools: &Pools) -> Lease {
        loop {
            let now = *self.proto.borrow();
            match now {
                Proto::H2 => return self.h2_lease(pools),
                Proto::Http1 => return Lease::of(&self.alpn.read()),
                Proto::Unknown => {
                    if shift(&self.proto, Proto::Unknown, Proto::Probing) {
                        // Learning again (an HTTP/2 connection failed): the old ALPN client may
                        // hold the first probe's connection, which the probe would reuse.
                        if self.probed.swap(true, Relaxed) {
                            match pools.origin_client(&self.proto, false) {
                                Ok(fresh) => *self.alpn.write() = fresh,
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot build an upstream client")
                                }
                            }
                        }
                        return Lease {
                            client: self.alpn.read().clone(),
                            shard: None,
                            probe: Some(self.proto.clone()),
                        };
                    }
                }
                Proto::Probing => {
                    let mut rx = self.proto.subscribe();
                    let wait = pools.connect + Duration::from_secs(1);
                    let learned =
                        tokio::time::timeout(wait, rx.wait_for(|p| *p != Proto::Probing)).await;
                    if learned.is_err() {
                        // The probe's connection should have been up or failed by now; go out
                        // without waiting longer (each call connects on its own, as before).
                        tracing::debug!("upstream protocol still unknown; not waiting longer");
                        return Lease::of(&self.alpn.read());
                    }
                }
            }
        }
    }

    fn h2_lease(&self, pools: &Pools) -> Lease {
        let shards = self.shards.read();
        if let Some(l) = shards.iter().find_map(Shard::try_take) {
            return l;
        }
        drop(shards);
        let mut shards = self.shards.write();
        // Another call may have added a pool meanwhile.
        if let Some(l) = shards.iter().find_map(Shard::try_take) {
            return l;
        }
        match pools.origin_client(&self.proto, true) {
            Ok(client) => {
                let shard = Arc::new(Shard {
                    client,
                    in_flight: AtomicUsize::new(0),
                });
                shards.push(shard.clone());
                tracing::debug!(pools = shards.len(), "another upstream HTTP/2 pool");
                shard.in_flight.fetch_add(1, Relaxed);
                Lease {
                    client: shard.client.clone(),
                    shard: Some(shard),
                    probe: None,
                }
            }
            // Built the same way as the ALPN client, so this does not happen; if it did, the call
            // goes out on the ALPN client (its own connection) rather than fail.
            Err(e) => {
                tracing::error!(error = %e, "cannot build another upstream client");
                Lease::of(&self.alpn.read())
            }
        }
    }
}

/// What each new connection of an origin's client reports: the protocol it negotiated, into the
/// origin's cell. On the HTTP/2 client (`h2_only`), a connection that did not negotiate `h2` (the
/// origin stopped offering it) is refused before a byte of HTTP is sent and the origin is marked
/// HTTP/1.1-only; a connection that failed makes the next call learn the protocol again.
fn report_proto(proto: ProtoCell, h2_only: bool) -> OnConnect {
    Arc::new(move |negotiated: Option<bool>| {
        let Some(h2) = negotiated else {
            // An origin that stopped offering h2 may refuse the handshake outright (no ALPN
            // protocol in common); the next call learns the protocol again.
            if h2_only {
                shift(&proto, Proto::H2, Proto::Unknown);
            }
            return Ok(());
        };
        let learned = if h2 { Proto::H2 } else { Proto::Http1 };
        proto.send_if_modified(|p| {
            let changed = *p != learned;
            *p = learned;
            changed
        });
        if h2_only && learned != Proto::H2 {
            return Err("the upstream no longer offers HTTP/2; the next call uses HTTP/1.1".into());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Result<Pools, String> {
        Pools::new(Duration::from_secs(1), &[]).map_err(|e| e.to_string())
    }

    const URL: &str = "https://api.example.com/v1";
    const ORIGIN: &str = "https://api.example.com";

    /// Marks `origin` as speaking `proto`, as a connection would.
    fn learn(p: &Pools, origin: &str, proto: Proto) -> Result<(), String> {
        let o = p.origin(origin).map_err(|e| e.to_string())?;
        o.proto.send_replace(proto);
        Ok(())
    }

    #[test]
    fn origins_are_scheme_and_authority_of_https_urls_only() {
        assert_eq!(
            https_origin("https://api.x.com/v1"),
            Some("https://api.x.com")
        );
        assert_eq!(https_origin("HTTPS://h:8443?q"), Some("HTTPS://h:8443"));
        assert_eq!(https_origin("https://h:1"), Some("https://h:1"));
        assert_eq!(https_origin("http://127.0.0.1:11434"), None);
        assert_eq!(https_origin("https:/"), None);
    }

    #[tokio::test]
    async fn http2_calls_past_a_pools_share_open_another_pool_and_return_their_place()
    -> Result<(), String> {
        let p = pools()?;
        learn(&p, ORIGIN, Proto::H2)?;
        let mut first = Vec::new();
        for _ in 0..STREAMS_PER_POOL {
            first.push(p.lease(URL).await);
        }
        assert_eq!(p.in_flight(ORIGIN), vec![STREAMS_PER_POOL]);
        let extra = p.lease(URL).await;
        assert_eq!(p.in_flight(ORIGIN), vec![STREAMS_PER_POOL, 1]);
        // Two leases of different pools are different pools (each its own connection).
        let (a, b) = (first[0].shard.clone(), extra.shard.clone());
        assert!(a.zip(b).is_some_and(|(a, b)| !Arc::ptr_eq(&a, &b)));
        drop(first);
        assert_eq!(p.in_flight(ORIGIN), vec![0, 1]);
        // A freed place is taken before a later pool's.
        let again = p.lease(&format!("{ORIGIN}/v1/other")).await;
        assert_eq!(p.in_flight(ORIGIN), vec![1, 1]);
        drop((extra, again));
        assert_eq!(p.in_flight(ORIGIN), vec![0, 0]);
        Ok(())
    }

    #[tokio::test]
    async fn plain_http_and_http1_origins_are_never_counted() -> Result<(), String> {
        let p = pools()?;
        learn(&p, ORIGIN, Proto::Http1)?;
        let mut leases = Vec::new();
        for _ in 0..STREAMS_PER_POOL * 2 {
            leases.push(p.lease("http://127.0.0.1:11434").await);
            leases.push(p.lease(URL).await);
        }
        assert!(
            leases
                .iter()
                .all(|l| l.shard.is_none() && l.probe.is_none())
        );
        assert_eq!(p.in_flight(ORIGIN), Vec::<usize>::new());
        Ok(())
    }

    #[tokio::test]
    async fn the_first_call_to_a_cold_origin_probes_and_the_rest_wait_for_what_it_learns()
    -> Result<(), String> {
        let p = Arc::new(pools()?);
        let probe = p.lease(URL).await;
        assert!(probe.probe.is_some());
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.lease(URL).await.shard.is_some() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            waiting.iter().all(|h| !h.is_finished()),
            "they wait for the probe"
        );
        // Another origin is not held up.
        let other = p.lease("https://other.example.com").await;
        assert!(other.probe.is_some());
        learn(&p, ORIGIN, Proto::H2)?;
        for h in waiting {
            assert!(h.await.map_err(|e| e.to_string())?, "an HTTP/2 pool place");
        }
        // The probe learned it; its end changes nothing.
        drop(probe);
        assert!(p.lease(URL).await.shard.is_some());
        Ok(())
    }

    #[tokio::test]
    async fn a_probe_that_ends_without_a_connection_hands_the_probe_on() -> Result<(), String> {
        let p = Arc::new(pools()?);
        let probe = p.lease(URL).await;
        let next = {
            let p = p.clone();
            tokio::spawn(async move { p.lease(URL).await.probe.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!next.is_finished());
        drop(probe);
        assert!(
            next.await.map_err(|e| e.to_string())?,
            "the next call probes"
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waits_for_a_probe_no_longer_than_the_connect_timeout_and_a_second()
    -> Result<(), String> {
        let p = pools()?;
        let _probe = p.lease(URL).await;
        let started = tokio::time::Instant::now();
        let l = p.lease(URL).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(l.shard.is_none() && l.probe.is_none());
        Ok(())
    }

    /// A real HTTPS upstream (the mock) and pools trusting its private CA.
    async fn https_upstream(alpn: &[&str]) -> Result<(hub_testkit::MockServer, Pools), String> {
        let (mock, ca) = hub_testkit::tls::https_mock(hub_testkit::Flavor::OpenAi, alpn)
            .await
            .map_err(|e| e.to_string())?;
        let roots = crate::upstream_http::roots_from_pem(ca.as_bytes())?;
        let pools = Pools::new(Duration::from_secs(5), &roots).map_err(|e| e.to_string())?;
        Ok((mock, pools))
    }

    async fn models(
        p: &Pools,
        base: &str,
    ) -> Result<http::Version, crate::upstream_http::TransportError> {
        let l = p.lease(base).await;
        let uri = format!("{base}/models").parse().unwrap_or_default();
        let r = l.get(uri).send().await?;
        Ok(r.version())
    }

    #[tokio::test]
    async fn connections_report_what_they_negotiated() -> Result<(), String> {
        for (alpn, learned, version) in [
            (&["h2", "http/1.1"][..], Proto::H2, http::Version::HTTP_2),
            (&["http/1.1"][..], Proto::Http1, http::Version::HTTP_11),
        ] {
            let (mock, p) = https_upstream(alpn).await?;
            let base = mock.base_url();
            let origin = https_origin(&base).ok_or("an https origin")?;
            // The probe, then a call by what it learned.
            for _ in 0..2 {
                assert_eq!(models(&p, &base).await.map_err(|e| e.to_string())?, version);
                assert_eq!(
                    *p.origin(origin).map_err(|e| e.to_string())?.proto.borrow(),
                    learned
                );
            }
        }
        Ok(())
    }

    /// An origin known to speak HTTP/2 that stops offering it: the HTTP/2 client's connection
    /// fails (a server that offers other protocols refuses the handshake) or is refused by the hub
    /// before any request is written (a server that ignores ALPN), and the next call goes out
    /// over HTTP/1.1.
    #[tokio::test]
    async fn an_origin_that_stops_offering_h2_is_called_over_http1_next() -> Result<(), String> {
        for alpn in [&["http/1.1"][..], &[][..]] {
            let (mock, p) = https_upstream(alpn).await?;
            let base = mock.base_url();
            let origin = https_origin(&base).ok_or("an https origin")?;
            learn(&p, origin, Proto::H2)?;
            let refused = models(&p, &base).await;
            assert!(refused.is_err(), "{alpn:?}: {refused:?}");
            assert_eq!(mock.stats().requests, 0, "{alpn:?}: nothing was sent");
            let proto = *p.origin(origin).map_err(|e| e.to_string())?.proto.borrow();
            assert_ne!(proto, Proto::H2, "{alpn:?}");
            let version = models(&p, &base).await.map_err(|e| e.to_string())?;
            assert_eq!(version, http::Version::HTTP_11, "{alpn:?}");
            assert_eq!(mock.stats().requests, 1, "{alpn:?}");
            let proto = *p.origin(origin).map_err(|e| e.to_string())?.proto.borrow();
            assert_eq!(proto, Proto::Http1, "{alpn:?}");
        }
        Ok(())
    }

    /// After an HTTP/2 connection failed the origin is learned again, by a probe on a fresh
    /// client: on the first probe's client it would reuse that probe's idle connection, learn
    /// nothing, and every call would queue behind it in turn.
    #[tokio::test]
    async fn learning_again_connects_afresh() -> Result<(), String> {
        let (mock, p) = https_upstream(&["h2", "http/1.1"]).await?;
        let base = mock.base_url();
        let origin = https_origin(&base).ok_or("an https origin")?;
        for _ in 0..2 {
            models(&p, &base).await.map_err(|e| e.to_string())?;
        }
        assert_eq!(
            mock.stats().connections,
            2,
            "the probe's and the HTTP/2 pool's"
        );
        // As a failed connect on the HTTP/2 client leaves it.
        learn(&p, origin, Proto::Unknown)?;
        models(&p, &base).await.map_err(|e| e.to_string())?;
        let proto = *p.origin(origin).map_err(|e| e.to_string())?.proto.borrow();
        assert_eq!(proto, Proto::H2);
        assert_eq!(mock.stats().connections, 3);
        Ok(())
    }

    #[test]
    fn concurrent_leases_never_overfill_a_pool() -> Result<(), String> {
        const X: &str = "https://x.example";
        let p = Arc::new(pools()?);
        learn(&p, X, Proto::H2)?;
        let held = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    let p = p.clone();
                    s.spawn(move || {
                        (0..60)
                            .map(|_| futures::executor::block_on(p.lease(X)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect::<Vec<_>>()
        });
        let counts = p.in_flight(X);
        assert_eq!(counts.iter().sum::<usize>(), 480);
        assert!(counts.iter().all(|&n| n <= STREAMS_PER_POOL), "{counts:?}");
        assert_eq!(counts.len(), 5, "{counts:?}");
        drop(held);
        assert!(p.in_flight(X).iter().all(|&n| n == 0));
        Ok(())
    }
}
