//! systemd's readiness protocol (`Type=notify`), without libsystemd: one datagram per state to
//! the unix socket `$NOTIFY_SOCKET` names (a path, or `@name` in the abstract namespace).
//! Without the variable (not started by systemd) nothing is sent.

/// Send `state` (e.g. `READY=1`, `STOPPING=1`). A failure is logged, never fatal: the service
/// manager's time-out says the rest.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&target, state) {
        tracing::warn!(error = %e, socket = ?target, "cannot tell systemd {state}");
    }
}

#[cfg(unix)]
fn send(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let sock = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    match bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        _ => {
            sock.send_to(state.as_bytes(), std::path::Path::new(target))?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn send(_: &std::ffi::OsStr, _: &str) -> std::io::Result<()> {
    Ok(())
}
