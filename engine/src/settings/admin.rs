//! `[admin]`: the operator's HTTP endpoint (metrics and the JSON API).

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::{Cx, Secret};

/// The admin endpoint's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where it listens.
    pub address: SocketAddr,
    /// With a token every request needs `Authorization: Bearer <token>`; without one the
    /// endpoint listens on loopback only.
    pub token: Option<Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    address: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

pub(super) fn check(r: RawAdmin, cx: &mut Cx<'_>) -> AdminSettings {
    let token = r
        .token_file
        .as_ref()
        .and_then(|f| cx.secret_file(f, "[admin] token_file"));
    let address = match &r.address {
        None => {
            cx.error(
                0..0,
                "[admin] has no address",
                "address = \"127.0.0.1:8025\"",
            );
            SocketAddr::from(([127, 0, 0, 1], 8025))
        }
        Some(a) => match a.get_ref().parse::<SocketAddr>() {
            Ok(sa) => {
                if !sa.ip().is_loopback() && r.token_file.is_none() {
                    cx.error(
                        a.span(),
                        format!(
                            "[admin] address {sa} is not a loopback address and no token_file is set: \
                             anyone who can reach it could control the engine"
                        ),
                        "a loopback address, or token_file = \"...\"",
                    );
                }
                sa
            }
            Err(_) => {
                cx.error(
                    a.span(),
                    format!(
                        "[admin] address {} is not ADDRESS:PORT",
                        crate::text::quoted_prefix_in(a.get_ref(), 40, '"')
                    ),
                    "such as \"127.0.0.1:8025\"",
                );
                SocketAddr::from(([127, 0, 0, 1], 8025))
            }
        },
    };
    AdminSettings { address, token }
}
