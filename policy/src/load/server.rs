//! `[server]` and `[admin]`: process-wide settings, static except `trusted_proxies`.

use super::*;

impl Compiler<'_, '_> {
    pub(super) fn compile_server(
        &self,
        server: ServerSection,
        sink: &mut ErrorSink<'_>,
    ) -> ServerSettings {
        let path = KeyPath::root().key("server");
        let default_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = server.threads.unwrap_or(default_threads);
        if !(1..=1024).contains(&threads) {
            sink.at(&path.key("threads"), "threads must be between 1 and 1024");
        }
        let client_idle_timeout = server
            .client_idle_timeout
            .map_or(DEFAULT_CLIENT_IDLE_TIMEOUT, |d| d.get());
        if client_idle_timeout < Duration::from_secs(1) {
            sink.at(
                &path.key("client_idle_timeout"),
                "client_idle_timeout must be at least 1s",
            );
        }
        let client_header_timeout = server
            .client_header_timeout
            .map_or(DEFAULT_CLIENT_HEADER_TIMEOUT, |d| d.get());
        let client_body_timeout = server
            .client_body_timeout
            .map_or(DEFAULT_CLIENT_BODY_TIMEOUT, |d| d.get());
        for (key, value) in [
            ("client_header_timeout", client_header_timeout),
            ("client_body_timeout", client_body_timeout),
        ] {
            if value < Duration::from_millis(100) {
                sink.at(&path.key(key), format!("{key} must be at least 100ms"));
            }
        }
        let size = |value: Option<crate::size::ByteSize>,
                    default: usize,
                    key: &str,
                    sink: &mut ErrorSink<'_>| {
            let bytes = value.map_or(default as u64, |s| s.bytes());
            if !(256..=MAX_HEAD_LIMIT).contains(&bytes) {
                sink.at(
                    &path.key(key),
                    format!(
                        "{key} must be between 256B and 512KiB (the most the HTTP parser reads)"
                    ),
                );
            }
            bytes as usize
        };
        let max_request_header_size = size(
            server.max_request_header_size,
            DEFAULT_MAX_REQUEST_HEADER_SIZE,
            "max_request_header_size",
            sink,
        );
        let max_uri_size = size(
            server.max_uri_size,
            DEFAULT_MAX_URI_SIZE,
            "max_uri_size",
            sink,
        );
        let max_upstream_response_header_size = server
            .max_upstream_response_header_size
            .map_or(DEFAULT_MAX_UPSTREAM_RESPONSE_HEADER_SIZE, |s| s.bytes());
        if !(1024..=MAX_UPSTREAM_HEAD_LIMIT).contains(&max_upstream_response_header_size) {
            sink.at(
                &path.key("max_upstream_response_header_size"),
                "max_upstream_response_header_size must be between 1KiB and 1MiB (the most the HTTP parser reads)",
            );
        }
        let max_request_headers = server
            .max_request_headers
            .unwrap_or(DEFAULT_MAX_REQUEST_HEADERS);
        if !(1..=MAX_HEADER_FIELDS).contains(&max_request_headers) {
            sink.at(
                &path.key("max_request_headers"),
                format!("max_request_headers must be between 1 and {MAX_HEADER_FIELDS} (the most the HTTP parser reads)"),
            );
        }
        ServerSettings {
            threads,
            grace_period: server
                .grace_period
                .map_or(DEFAULT_GRACE_PERIOD, |d| d.get()),
            client_idle_timeout,
            drain_delay: server.drain_delay.map_or(DEFAULT_DRAIN_DELAY, |d| d.get()),
            path_normalization: server.path_normalization.unwrap_or_default(),
            client_header_timeout,
            client_body_timeout,
            max_request_header_size,
            max_request_headers: max_request_headers as usize,
            max_uri_size,
            max_upstream_response_header_size: max_upstream_response_header_size as usize,
            preserve_header_case: server.preserve_header_case.unwrap_or(false),
        }
    }

    pub(super) fn compile_admin(
        &self,
        admin: AdminSection,
        sink: &mut ErrorSink<'_>,
    ) -> Option<AdminSettings> {
        let path = KeyPath::root().key("admin");
        let listen_text = admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
        let listen = parse_socket_addr(listen_text)
            .map_err(|message| sink.at(&path.key("listen"), message))
            .ok();
        let token_file_explicit = admin.token_file.is_some();
        let token_file = match &admin.token_file {
            Some(file) => {
                let resolved = self.resolve_path(file);
                if !resolved.exists() {
                    sink.at(
                        &path.key("token_file"),
                        format!("token file {} does not exist", resolved.display()),
                    );
                }
                resolved
            }
            None => self.base_dir.join("admin.token"),
        };
        // The same rule `run` applies, so that `meshgate check` refuses what `run` would. A
        // missing default file is created with a fresh token at start, so it is not an error.
        if token_file.exists() {
            // A file named explicitly must be private; the default one is created 0600.
            let private = || match token_file_explicit {
                true => crate::files::check_private_file(&token_file),
                false => Ok(()),
            };
            if let Err(message) = crate::files::read_named_file(&token_file)
                .and_then(|bytes| check_admin_token(&token_file, &bytes).map(|_| ()))
                .and_then(|()| private())
            {
                sink.at(&path.key("token_file"), message);
            }
        }
        if let Some(addr) = listen {
            if !addr.ip().is_loopback() && !token_file_explicit {
                sink.at(
                    &path.key("listen"),
                    format!(
                        "the admin API may listen on the non-loopback address {addr} only with an explicit `token_file`"
                    ),
                );
            }
        }
        let history = admin.history.unwrap_or(DEFAULT_HISTORY);
        if !(1..=1000).contains(&history) {
            sink.at(&path.key("history"), "history must be between 1 and 1000");
        }
        let mut allowed_hosts = Vec::new();
        for (i, name) in admin.allowed_hosts.iter().flatten().enumerate() {
            // A DNS name, as a server name is written (no wildcard).
            let lower = name.to_ascii_lowercase();
            let valid = !lower.starts_with("*.") && super::tls::is_server_name_pattern(&lower);
            if valid {
                allowed_hosts.push(name.to_ascii_lowercase());
            } else {
                sink.at(
                    &path.key("allowed_hosts").index(i),
                    format!("{name:?} is not a host name: give a name alone, such as \"gateway-1.internal\" (no scheme, port or path; IP addresses and localhost are always answered)"),
                );
            }
        }
        Some(AdminSettings {
            listen: listen?,
            token_file,
            token_file_explicit,
            history: history as usize,
            allowed_hosts,
        })
    }
}

pub(super) fn compile_trusted_proxies(
    entries: &[String],
    sink: &mut ErrorSink<'_>,
) -> Vec<ipnet::IpNet> {
    let path = KeyPath::root().key("server").key("trusted_proxies");
    compile_address_blocks(entries, &path, sink)
}

/// Addresses and CIDR blocks (`10.0.0.0/8`, `192.0.2.7`, `::1/128`).
pub(super) fn compile_address_blocks(
    entries: &[String],
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Vec<ipnet::IpNet> {
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| {
            let parsed = entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    sink.at(
                        &path.index(i),
                        format!("invalid address or CIDR block {entry:?}: expected such as \"10.0.0.0/8\" or \"192.0.2.7\""),
                    );
                    None
                }
            }
        })
        .collect()
}

/// Shortest admin token accepted, in characters.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// The admin token held by `contents` (the file's text, trimmed), or why it is refused.
pub fn check_admin_token(file: &Path, contents: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(contents)
        .map_err(|_| format!("{}: the admin token is not UTF-8 text", file.display()))?;
    let token = text.trim();
    if token.len() < MIN_ADMIN_TOKEN {
        return Err(format!(
            "{}: the admin token must be at least {MIN_ADMIN_TOKEN} characters (it has {})",
            file.display(),
            token.len()
        ));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{}: the admin token must be one word, without spaces or control characters",
            file.display()
        ));
    }
    Ok(token.to_owned())
}
