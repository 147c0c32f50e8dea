//! `[routes.rate_limit]` and `[rate_limit_store]`.

use super::*;

pub(super) fn compile_rate_limit_store(
    spec: RateLimitStoreSection,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> RateLimitStoreSettings {
    match url::Url::parse(&spec.redis) {
        Err(e) => sink.at(
            &path.key("redis"),
            format!(
                "invalid URL {:?}: {e}; expected redis://host:port/db",
                spec.redis
            ),
        ),
        Ok(url) => {
            if url.scheme() != "redis" {
                sink.at(
                    &path.key("redis"),
                    format!(
                        "unsupported scheme {:?}: only redis:// is supported",
                        url.scheme()
                    ),
                );
            } else if url.host_str().is_none_or(str::is_empty) {
                sink.at(
                    &path.key("redis"),
                    "the URL needs a host, as in redis://127.0.0.1:6379/0",
                );
            } else if !matches!(url.path().trim_start_matches('/'), "")
                && url.path().trim_start_matches('/').parse::<u16>().is_err()
            {
                sink.at(
                    &path.key("redis"),
                    format!("the URL path {:?} must be a database number, as in redis://127.0.0.1:6379/0", url.path()),
                );
            }
        }
    }
    let timeout = spec.timeout.map_or(DEFAULT_STORE_TIMEOUT, |d| d.get());
    if timeout.is_zero() || timeout > Duration::from_secs(10) {
        sink.at(
            &path.key("timeout"),
            "timeout must be more than zero and at most 10s",
        );
    }
    let pool_size = spec.pool_size.unwrap_or(DEFAULT_STORE_POOL);
    if !(1..=64).contains(&pool_size) {
        sink.at(&path.key("pool_size"), "pool_size must be between 1 and 64");
    }
    let key_prefix = spec.key_prefix.unwrap_or_else(|| "meshgate".to_owned());
    if key_prefix.is_empty()
        || key_prefix.len() > 64
        || !key_prefix.bytes().all(|b| b.is_ascii_graphic())
    {
        sink.at(
            &path.key("key_prefix"),
            "key_prefix must be 1 to 64 printable characters without spaces",
        );
    }
    RateLimitStoreSettings {
        redis_url: spec.redis,
        on_error: spec.on_error,
        timeout,
        pool_size,
        key_prefix,
    }
}

pub(super) fn compile_rate_limit(
    spec: &RateLimitSection,
    store_declared: bool,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> RateLimitSpec {
    let rate = spec.requests_per_second;
    if !rate.is_finite() || rate <= 0.0 {
        sink.at(
            &path.key("requests_per_second"),
            "requests_per_second must be more than zero (a route that takes no requests needs no route)",
        );
    } else if !(0.001..=1_000_000.0).contains(&rate) {
        sink.at(
            &path.key("requests_per_second"),
            "requests_per_second must be between 0.001 and 1000000",
        );
    }
    let burst = spec.burst.unwrap_or_else(|| {
        if rate.is_finite() && rate > 1.0 {
            rate.ceil().min(1_000_000.0) as u32
        } else {
            1
        }
    });
    if !(1..=1_000_000).contains(&burst) {
        sink.at(
            &path.key("burst"),
            "burst must be between 1 and 1000000 (a bucket must hold at least one request)",
        );
    }
    let key = match &spec.key {
        None => LimitKey::ClientIp,
        Some(text) => LimitKey::parse(text).unwrap_or_else(|message| {
            sink.at(&path.key("key"), message);
            LimitKey::Route
        }),
    };
    if spec.scope == RateLimitScope::Global {
        if !store_declared {
            sink.at(
                &path.key("scope"),
                "scope = \"global\" needs a [rate_limit_store] section (redis = \"redis://host:port/db\")",
            );
        }
        if spec.max_keys.is_some() {
            sink.at(
                &path.key("max_keys"),
                "max_keys bounds a local limit only; a global limit's keys expire in the store",
            );
        }
    }
    let max_keys = spec.max_keys.unwrap_or(DEFAULT_MAX_LIMIT_KEYS);
    if !(1..=10_000_000).contains(&max_keys) {
        sink.at(
            &path.key("max_keys"),
            "max_keys must be between 1 and 10000000",
        );
    }
    RateLimitSpec {
        requests_per_second: rate,
        burst,
        key,
        scope: spec.scope,
        mode: spec.mode,
        headers_on_success: spec.headers_on_success.unwrap_or(false),
        max_keys,
    }
}
