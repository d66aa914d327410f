//! AUTH (RFC 4954) on the server side: the PLAIN (RFC 4616) and LOGIN exchanges, decoded
//! into an [`Action::Authenticate`] for the driver. Identities with control characters are
//! refused here, before any password check or log line.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::*;

impl ServerSession {
    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<String>) {
        if !self.helo.as_ref().is_some_and(|(_, esmtp)| *esmtp) {
            return self.refuse(bad_sequence("Send EHLO first"));
        }
        if self.auth_user.is_some() {
            return self.refuse(bad_sequence("Already authenticated"));
        }
        if self.tx.is_some() {
            return self.refuse(bad_sequence("AUTH not allowed during a mail transaction"));
        }
        if self.tls.is_none() {
            return self.refuse(Reply::new(
                538,
                codes::ENCRYPTION_REQUIRED,
                "Encryption required for requested authentication mechanism (use STARTTLS)",
            ));
        }
        match (mechanism, initial) {
            ("PLAIN", None) => {
                self.send(Reply::plain(334, ""));
                self.phase = Phase::SaslPlain;
            }
            ("PLAIN", Some(resp)) => self.sasl_plain(resp.as_bytes()),
            ("LOGIN", None) => {
                self.send(Reply::plain(334, "VXNlcm5hbWU6"));
                self.phase = Phase::SaslLoginUser;
            }
            ("LOGIN", Some(resp)) => self.sasl_login_user(resp.as_bytes()),
            _ => self.refuse(Reply::new(
                504,
                codes::BAD_ARGS,
                "Unrecognized authentication mechanism",
            )),
        }
    }

    /// Decodes one SASL response line; `None` after replying to `*` or bad base64.
    fn sasl_decode(&mut self, line: &[u8]) -> Option<Vec<u8>> {
        if line == b"*" {
            // RFC 4954 §4: the client cancelled the exchange.
            self.refuse(Reply::new(501, codes::SECURITY, "Authentication cancelled"));
            return None;
        }
        if line == b"=" {
            return Some(Vec::new());
        }
        match BASE64.decode(line) {
            Ok(v) => Some(v),
            Err(_) => {
                self.refuse(Reply::new(
                    501,
                    codes::SYNTAX,
                    "Invalid base64 in authentication response",
                ));
                None
            }
        }
    }

    pub(super) fn sasl_plain(&mut self, line: &[u8]) {
        let Some(decoded) = self.sasl_decode(line) else {
            return;
        };
        // RFC 4616 §2: [authzid] NUL authcid NUL passwd.
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        let [authzid, authcid, passwd] = parts.as_slice() else {
            return self.refuse(Reply::new(
                501,
                codes::SYNTAX,
                "Malformed PLAIN authentication response",
            ));
        };
        let (Ok(authzid), Ok(user), Ok(pass)) = (
            std::str::from_utf8(authzid),
            std::str::from_utf8(authcid),
            std::str::from_utf8(passwd),
        ) else {
            return self.refuse(Reply::new(
                501,
                codes::SYNTAX,
                "Authentication response is not UTF-8",
            ));
        };
        let authzid = (!authzid.is_empty() && authzid != user).then(|| authzid.to_string());
        self.authenticate(
            SaslMechanism::Plain,
            user.to_string(),
            pass.to_string(),
            authzid,
        );
    }

    pub(super) fn sasl_login_user(&mut self, line: &[u8]) {
        let Some(decoded) = self.sasl_decode(line) else {
            return;
        };
        match String::from_utf8(decoded) {
            Ok(user) => {
                self.send(Reply::plain(334, "UGFzc3dvcmQ6"));
                self.phase = Phase::SaslLoginPass(user);
            }
            Err(_) => self.refuse(Reply::new(
                501,
                codes::SYNTAX,
                "Authentication response is not UTF-8",
            )),
        }
    }

    pub(super) fn sasl_login_pass(&mut self, user: String, line: &[u8]) {
        let Some(decoded) = self.sasl_decode(line) else {
            return;
        };
        match String::from_utf8(decoded) {
            Ok(pass) => self.authenticate(SaslMechanism::Login, user, pass, None),
            Err(_) => self.refuse(Reply::new(
                501,
                codes::SYNTAX,
                "Authentication response is not UTF-8",
            )),
        }
    }

    fn authenticate(
        &mut self,
        mechanism: SaslMechanism,
        username: String,
        password: String,
        authzid: Option<String>,
    ) {
        // An identity is an address: a control character in it is an attack on the logs
        // (a forged line for fail2ban) or a terminal, never a user.
        let controls = |s: &str| s.chars().any(char::is_control);
        if controls(&username) || authzid.as_deref().is_some_and(controls) {
            self.phase = Phase::Command;
            return self.refuse(Reply::new(
                501,
                codes::SYNTAX,
                "Authentication identity contains control characters",
            ));
        }
        self.phase = Phase::Pending(Pending::Auth(username.clone()));
        self.actions.push_back(Action::Authenticate {
            mechanism,
            username,
            password,
            authzid,
        });
    }
}
