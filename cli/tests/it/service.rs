//! `smtpw run` under systemd (Type=notify): READY=1 once started, RELOADING=1 then READY=1
//! around a reload (SIGHUP), STOPPING=1 at a stop, sent as datagrams to $NOTIFY_SOCKET.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use mock_mta::MockConfig;
use smtpw_testkit::proc::{Kid, LoopbackMock};
use smtpw_testkit::site::Site;

use crate::SMTPW;

fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => format!("(nothing: {e})"),
    }
}

#[test]
fn it_tells_systemd_ready_reloading_then_stopping() {
    let mock = LoopbackMock::start(MockConfig::iis());
    let site = Site::new(SMTPW);
    site.point_at(mock.port, 1, 10);
    let path = site.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut cmd = site.run_cmd(false, &[]);
    cmd.env("NOTIFY_SOCKET", &path);
    let mut kid = Kid::spawn(cmd, "smtpw run");
    assert_eq!(next(&sock), "READY=1", "{}", site.log_text());
    kid.signal("HUP");
    assert_eq!(next(&sock), "RELOADING=1", "{}", site.log_text());
    assert_eq!(next(&sock), "READY=1", "{}", site.log_text());
    kid.term();
    assert_eq!(next(&sock), "STOPPING=1", "{}", site.log_text());
    assert!(kid
        .wait_for(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
}
