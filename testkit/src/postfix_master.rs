//! A private Postfix instance's master.cf, made from the system's: smtpd on one loopback port
//! (never port 25), every service without chroot (the instance has no chroot tree). Shared by
//! the tests' instance (`smtpw_testkit::postfix`) and `cargo xtask bench`'s (xtask includes this
//! file by path: it has no dependency on the test kit).

/// The system's `master.cf` text with its `smtp inet` service moved to 127.0.0.1:`port` and
/// chroot turned off everywhere.
pub fn master_cf(system: &str, port: u16) -> String {
    let mut mc = String::new();
    for line in system.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let service = !line.starts_with(['#', ' ', '\t']) && f.len() >= 8;
        if service && f[0] == "smtp" && f[1] == "inet" {
            mc.push_str(&format!("127.0.0.1:{port} inet n - n - - smtpd\n"));
        } else if service && ["unix", "inet", "fifo", "pass", "unix-dgram"].contains(&f[1]) {
            let mut g = f.clone();
            g[4] = "n";
            mc.push_str(&g.join(" "));
            mc.push('\n');
        } else {
            mc.push_str(line);
            mc.push('\n');
        }
    }
    mc
}
