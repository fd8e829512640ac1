//! `POST /api/v1/reload`: as SIGHUP (OPS-8): SITE.CFG and smtpw.toml read again; a file with
//! errors changes nothing and the reply lists every error.

use hyper::StatusCode;

use smtpw_engine::spool::Spool;

use super::{error, json, AdminState, Reply};

pub async fn post<S: Spool>(state: &AdminState<S>) -> Reply {
    let reloader = state.reloader.clone();
    match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(Ok(changes)) => json(StatusCode::OK, &serde_json::json!({ "changes": changes })),
        Ok(Err(errors)) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload refused, nothing changed:\n{errors}"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed: {e}"),
        ),
    }
}
