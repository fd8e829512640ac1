//! SMTP AUTH (RFC 4954) as a small sans-I/O machine the session runs after EHLO (TXN-12):
//! PLAIN (RFC 4616) with its initial response, LOGIN (the `Username:`/`Password:` challenges
//! of IIS and Exchange), XOAUTH2 (Google's and Microsoft's bearer-token SASL).
//!
//! The lines it makes carry the secret: they go to the output buffer and nowhere else (no
//! `Debug`, no log, no error message holds them).

use base64::Engine as _;

use super::reply::Reply;
use crate::settings::{AuthMechanism, Secret};

/// Who to log in as, and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name sent.
    pub username: String,
    /// The password or token.
    pub secret: CredentialSecret,
    /// The mechanism the settings name; `None`: the best the relay offers.
    pub mechanism: Option<AuthMechanism>,
}

/// A password (PLAIN, LOGIN) or an OAuth 2 access token (XOAUTH2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSecret {
    /// A password (PLAIN, LOGIN).
    Password(Secret),
    /// An OAuth 2 access token (XOAUTH2).
    Token(Secret),
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Pick the mechanism: the one the settings name if the relay offers it; else, for a password,
/// PLAIN before LOGIN (one round trip instead of three); for a token, XOAUTH2. `Ok(None)`: the
/// relay advertises no AUTH at all (the session goes on unauthenticated, as Postfix's client
/// does). `Err`: AUTH is advertised, but nothing these credentials can use.
pub(crate) fn choose(
    creds: &Credentials,
    offered: &[String],
) -> Result<Option<AuthMechanism>, String> {
    if offered.is_empty() {
        return Ok(None);
    }
    let has = |m: AuthMechanism| offered.iter().any(|o| o.eq_ignore_ascii_case(m.as_str()));
    let candidates: Vec<AuthMechanism> = match (&creds.secret, creds.mechanism) {
        (_, Some(m)) => vec![m],
        (CredentialSecret::Password(_), None) => vec![AuthMechanism::Plain, AuthMechanism::Login],
        (CredentialSecret::Token(_), None) => vec![AuthMechanism::Xoauth2],
    };
    candidates
        .iter()
        .copied()
        .find(|m| has(*m))
        .map(Some)
        .ok_or_else(|| {
            let want: Vec<&str> = candidates.iter().map(|m| m.as_str()).collect();
            format!(
                "the relay offers AUTH {} but not {}",
                offered.join(" "),
                want.join(" or ")
            )
        })
}

/// What the session does with a reply during AUTH.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthNext {
    /// Write this line (CRLF included) and wait for its reply.
    Send(Vec<u8>),
    /// 235: authenticated.
    Done,
    /// Refused (535, 534, 454, ...): the reply says why.
    Refused(Reply),
}

/// One AUTH exchange.
#[derive(Debug)]
pub(crate) struct Auth {
    creds: Credentials,
    mechanism: AuthMechanism,
    /// Challenges answered so far.
    step: u8,
}

impl Auth {
    pub(crate) fn new(creds: Credentials, mechanism: AuthMechanism) -> Self {
        Self {
            creds,
            mechanism,
            step: 0,
        }
    }

    pub(crate) fn mechanism(&self) -> AuthMechanism {
        self.mechanism
    }

    pub(crate) fn username(&self) -> &str {
        &self.creds.username
    }

    fn secret(&self) -> &str {
        match &self.creds.secret {
            CredentialSecret::Password(s) | CredentialSecret::Token(s) => s.expose(),
        }
    }

    /// The `AUTH` command line.
    pub(crate) fn first_line(&self) -> Vec<u8> {
        let mut line = match self.mechanism {
            AuthMechanism::Plain => {
                let mut raw = Vec::new();
                raw.push(0);
                raw.extend_from_slice(self.creds.username.as_bytes());
                raw.push(0);
                raw.extend_from_slice(self.secret().as_bytes());
                format!("AUTH PLAIN {}", b64(&raw)).into_bytes()
            }
            AuthMechanism::Login => b"AUTH LOGIN".to_vec(),
            AuthMechanism::Xoauth2 => {
                let raw = format!(
                    "user={}\x01auth=Bearer {}\x01\x01",
                    self.creds.username,
                    self.secret()
                );
                format!("AUTH XOAUTH2 {}", b64(raw.as_bytes())).into_bytes()
            }
        };
        line.extend_from_slice(b"\r\n");
        line
    }

    /// The reply to the last line written.
    pub(crate) fn on_reply(&mut self, reply: &Reply) -> AuthNext {
        if reply.code == 235 {
            return AuthNext::Done;
        }
        if reply.code != 334 {
            return AuthNext::Refused(reply.clone());
        }
        self.step = self.step.saturating_add(1);
        let answer: Vec<u8> = match (self.mechanism, self.step) {
            // LOGIN: the user name, then the password, whatever the challenge's text (some
            // servers send it lower case, some not base64 at all).
            (AuthMechanism::Login, 1) => b64(self.creds.username.as_bytes()).into_bytes(),
            (AuthMechanism::Login, 2) => b64(self.secret().as_bytes()).into_bytes(),
            // XOAUTH2: a 334 carries the error (an expired token, say); an empty line asks for
            // the final reply (a 535).
            (AuthMechanism::Xoauth2, 1) => Vec::new(),
            // PLAIN sent its initial response: an empty challenge asks for it again.
            (AuthMechanism::Plain, 1) if reply.text.trim().is_empty() => {
                let mut raw = vec![0];
                raw.extend_from_slice(self.creds.username.as_bytes());
                raw.push(0);
                raw.extend_from_slice(self.secret().as_bytes());
                b64(&raw).into_bytes()
            }
            // Anything more: cancel (RFC 4954 §4); its reply (501) ends the exchange.
            _ => b"*".to_vec(),
        };
        let mut line = answer;
        line.extend_from_slice(b"\r\n");
        AuthNext::Send(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::parse_reply;

    fn reply(s: &str) -> Reply {
        parse_reply(format!("{s}\r\n").as_bytes())
            .unwrap()
            .unwrap()
            .0
    }

    fn creds(mech: Option<AuthMechanism>) -> Credentials {
        Credentials {
            username: "lists".into(),
            secret: CredentialSecret::Password(Secret::new("s3cret-pw")),
            mechanism: mech,
        }
    }

    fn offered(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn choice_prefers_plain_then_login_and_honours_the_setting() {
        let c = creds(None);
        assert_eq!(
            choose(&c, &offered(&["GSSAPI", "NTLM", "LOGIN", "PLAIN"])),
            Ok(Some(AuthMechanism::Plain))
        );
        assert_eq!(
            choose(&c, &offered(&["GSSAPI", "NTLM", "LOGIN"])),
            Ok(Some(AuthMechanism::Login))
        );
        assert_eq!(choose(&c, &[]), Ok(None));
        let e = choose(&c, &offered(&["GSSAPI", "NTLM"])).unwrap_err();
        assert!(e.contains("not PLAIN or LOGIN"), "{e}");
        let c = creds(Some(AuthMechanism::Login));
        assert_eq!(
            choose(&c, &offered(&["LOGIN", "PLAIN"])),
            Ok(Some(AuthMechanism::Login))
        );
        let t = Credentials {
            secret: CredentialSecret::Token(Secret::new("tok")),
            ..creds(None)
        };
        assert_eq!(
            choose(&t, &offered(&["LOGIN", "XOAUTH2"])),
            Ok(Some(AuthMechanism::Xoauth2))
        );
    }

    #[test]
    fn plain_sends_everything_in_the_first_line() {
        let mut a = Auth::new(creds(None), AuthMechanism::Plain);
        assert_eq!(
            a.first_line(),
            format!("AUTH PLAIN {}\r\n", b64(b"\0lists\0s3cret-pw")).into_bytes()
        );
        assert_eq!(a.on_reply(&reply("235 2.7.0 ok")), AuthNext::Done);
    }

    #[test]
    fn login_answers_user_then_password_and_a_refusal_ends_it() {
        let mut a = Auth::new(creds(None), AuthMechanism::Login);
        assert_eq!(a.first_line(), b"AUTH LOGIN\r\n");
        assert_eq!(
            a.on_reply(&reply("334 VXNlcm5hbWU6")),
            AuthNext::Send(format!("{}\r\n", b64(b"lists")).into_bytes())
        );
        assert_eq!(
            a.on_reply(&reply("334 UGFzc3dvcmQ6")),
            AuthNext::Send(format!("{}\r\n", b64(b"s3cret-pw")).into_bytes())
        );
        let r = reply("535 5.7.3 Authentication unsuccessful");
        assert_eq!(a.on_reply(&r), AuthNext::Refused(r.clone()));
        // A fourth challenge is cancelled.
        let mut a = Auth::new(creds(None), AuthMechanism::Login);
        a.on_reply(&reply("334 x"));
        a.on_reply(&reply("334 y"));
        assert_eq!(
            a.on_reply(&reply("334 z")),
            AuthNext::Send(b"*\r\n".to_vec())
        );
    }

    #[test]
    fn xoauth2_sends_the_bearer_token_and_answers_an_error_challenge_with_an_empty_line() {
        let t = Credentials {
            secret: CredentialSecret::Token(Secret::new("ya29.tok")),
            ..creds(None)
        };
        let mut a = Auth::new(t, AuthMechanism::Xoauth2);
        assert_eq!(
            a.first_line(),
            format!(
                "AUTH XOAUTH2 {}\r\n",
                b64(b"user=lists\x01auth=Bearer ya29.tok\x01\x01")
            )
            .into_bytes()
        );
        assert_eq!(
            a.on_reply(&reply("334 eyJzdGF0dXMiOiI0MDEifQ==")),
            AuthNext::Send(b"\r\n".to_vec())
        );
        let r = reply("535 5.7.3 Authentication unsuccessful");
        assert_eq!(a.on_reply(&r), AuthNext::Refused(r.clone()));
    }

    #[test]
    fn debug_output_never_holds_the_secret() {
        let a = Auth::new(creds(None), AuthMechanism::Plain);
        let shown = format!("{a:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
    }
}
