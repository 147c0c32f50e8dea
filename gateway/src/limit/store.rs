//! The shared store of global rate limits: Redis, one script call (one round trip) per
//! decision.
//!
//! The store owns a small pool of multiplexed connections. A thread of its own connects them
//! and reconnects any that broke, so the request path never waits for a connection: it uses a
//! live one or fails at once, and `on_error` decides.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use meshgate_policy::compiled::RateLimitStoreSettings;
use meshgate_policy::schema::StoreErrorAction;
use prometheus::{Histogram, IntCounter};
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

use super::{Decision, Gcra};
use crate::telemetry::Metrics;

/// GCRA on the store's clock (`TIME`), so gateways whose clocks differ still share one
/// bucket. Times are microseconds, which a Lua number holds exactly. Returns
/// `{allowed, remaining, wait_us}`.
const TAKE_TOKEN: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
local ahead = next_tat - now
if ahead > capacity then
  return {0, 0, math.ceil(ahead - capacity)}
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil(ahead / 1000) + 1000)
return {1, math.floor((capacity - ahead) / interval), math.ceil(ahead)}
";

/// How often broken connections are retried.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);

/// A pool of connections to the rate-limit Redis.
pub struct RateLimitStore {
    /// The settings it was made from; a reload keeps the store while they are unchanged.
    pub settings: RateLimitStoreSettings,
    shared: Arc<Shared>,
    next: AtomicUsize,
    script: redis::Script,
    duration: Histogram,
    errors_timeout: IntCounter,
    errors_unavailable: IntCounter,
    errors_other: IntCounter,
}

struct Shared {
    slots: Vec<ArcSwapOption<MultiplexedConnection>>,
    /// Wakes the connector when a connection broke.
    broken: Notify,
    /// Set when the store is dropped: the connector thread ends.
    stop: Notify,
    stopped: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RateLimitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RateLimitStore {
    /// Starts connecting to the store; requests fail (and `on_error` applies) until it is up.
    pub fn new(settings: &RateLimitStoreSettings, metrics: &Metrics) -> RateLimitStore {
        let shared = Arc::new(Shared {
            slots: (0..settings.pool_size.max(1))
                .map(|_| ArcSwapOption::empty())
                .collect(),
            broken: Notify::new(),
            stop: Notify::new(),
            stopped: false.into(),
        });
        match redis::Client::open(settings.redis_url.as_str()) {
            Ok(client) => spawn_connector(client, Arc::clone(&shared), settings.timeout),
            Err(e) => tracing::error!(
                url = %settings.redis_url,
                "rate_limit_store.redis: {e}; global limits will follow on_error"
            ),
        }
        let errors = |kind: &str| metrics.rate_limit_store_errors.with_label_values(&[kind]);
        RateLimitStore {
            settings: settings.clone(),
            shared,
            next: AtomicUsize::new(0),
            script: redis::Script::new(TAKE_TOKEN),
            duration: metrics.rate_limit_store_duration.clone(),
            errors_timeout: errors("timeout"),
            errors_unavailable: errors("unavailable"),
            errors_other: errors("error"),
        }
    }

    /// What global limits do when the store fails.
    pub fn on_error(&self) -> StoreErrorAction {
        self.settings.on_error
    }

    /// Takes a token from the bucket at `key`.
    pub async fn take(&self, key: &str, gcra: Gcra) -> Result<Decision, ()> {
        let Some((slot, mut connection)) = self.connection() else {
            self.errors_unavailable.inc();
            return Err(());
        };
        let started = Instant::now();
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(key)
            .arg(gcra.interval as f64 / 1000.0)
            .arg(gcra.capacity as f64 / 1000.0);
        let call = invocation.invoke_async::<(u8, u64, u64)>(&mut connection);
        let result = tokio::time::timeout(self.settings.timeout, call).await;
        self.duration.observe(started.elapsed().as_secs_f64());
        match result {
            Err(_) => {
                self.errors_timeout.inc();
                Err(())
            }
            Ok(Err(e)) => {
                // A slow answer is a timeout, not a broken connection: the connection stays,
                // so the next decision waits for the store again instead of failing at once.
                if e.is_timeout() {
                    self.errors_timeout.inc();
                } else if e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error()
                {
                    self.errors_unavailable.inc();
                    self.mark_broken(slot);
                } else {
                    self.errors_other.inc();
                    tracing::warn!("rate limit store: {e}");
                }
                Err(())
            }
            Ok(Ok((allowed, remaining, wait_micros))) => Ok(Decision {
                allowed: allowed == 1,
                remaining,
                wait: Duration::from_micros(wait_micros),
            }),
        }
    }

    /// A live connection, round robin over the pool.
    fn connection(&self) -> Option<(usize, MultiplexedConnection)> {
        let slots = &self.shared.slots;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..slots.len()).find_map(|offset| {
            let slot = (start + offset) % slots.len();
            slots[slot]
                .load()
                .as_ref()
                .map(|c| (slot, MultiplexedConnection::clone(c)))
        })
    }

    fn mark_broken(&self, slot: usize) {
        self.shared.slots[slot].store(None);
        self.shared.broken.notify_one();
    }
}

impl Drop for RateLimitStore {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        self.shared.stop.notify_one();
    }
}

/// Runs the connector on a thread of its own, with a runtime that also drives the
/// connections, so they live as long as the store whatever runtime a request runs on.
fn spawn_connector(client: redis::Client, shared: Arc<Shared>, timeout: Duration) {
    let spawned = std::thread::Builder::new()
        .name("meshgate-ratelimit-store".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!("rate limit store: cannot start its runtime: {e}");
                    return;
                }
            };
            runtime.block_on(connect_forever(client, shared, timeout));
        });
    if let Err(e) = spawned {
        tracing::error!("rate limit store: cannot start its thread: {e}");
    }
}

async fn connect_forever(client: redis::Client, shared: Arc<Shared>, timeout: Duration) {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
        .set_response_timeout(Some(timeout));
    let mut was_down = false;
    while !shared.stopped.load(Ordering::Relaxed) {
        let mut down = 0;
        for slot in &shared.slots {
            if slot.load().is_some() {
                continue;
            }
            match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(connection) => slot.store(Some(Arc::new(connection))),
                Err(e) => {
                    down += 1;
                    if !was_down {
                        tracing::warn!("rate limit store unreachable: {e}");
                    }
                }
            }
        }
        if was_down && down == 0 {
            tracing::info!("rate limit store reachable again");
        }
        was_down = down > 0;
        tokio::select! {
            _ = shared.stop.notified() => return,
            _ = shared.broken.notified() => {}
            _ = tokio::time::sleep(RECONNECT_INTERVAL), if was_down => {}
        }
    }
}
