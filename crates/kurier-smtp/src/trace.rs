//! The `Received:` trace header (RFC 5321 §4.4, RFC 5322 §3.6.7).
//!
//! Every SMTP server that accepts a message prepends one, recording who handed it over (the
//! HELO name and the TCP peer), who received it, with which protocol (RFC 3848, RFC 6531
//! §3.7.3), the queue id and the time. The caller supplies the time as text, so this stays pure.

use std::net::IpAddr;

use crate::session::TlsInfo;

/// What goes into one Received header.
#[derive(Debug, Clone)]
pub struct Received<'a> {
    /// The name the client gave in HELO/EHLO.
    pub helo: &'a str,
    /// The client's IP address (RFC 5321 §4.4 TCP-info).
    pub peer_ip: IpAddr,
    /// The client's reverse DNS name, when known.
    pub peer_name: Option<&'a str>,
    /// Our host name.
    pub by: &'a str,
    /// Protocol name: SMTP, ESMTP, ESMTPS, ESMTPSA, UTF8SMTPS…
    pub protocol: &'a str,
    /// The TLS parameters of the session.
    pub tls: Option<&'a TlsInfo>,
    /// Our queue id.
    pub id: &'a str,
    /// The recipient, when there is exactly one (RFC 5321 §4.4: "for" with several
    /// recipients would disclose Bcc recipients).
    pub for_rcpt: Option<&'a str>,
    /// RFC 5322 date-time, e.g. `Mon, 23 Nov 2026 09:05:03 +0000`.
    pub date: &'a str,
}

impl Received<'_> {
    /// The folded header field, ending in CRLF.
    ///
    /// Client-supplied names are cleaned; in a message not sent with SMTPUTF8 they are
    /// also kept to ASCII (RFC 6532 header text belongs only to SMTPUTF8 mail, RFC 6531 §3.7.3).
    pub fn to_header(&self) -> String {
        let utf8 = self.protocol.starts_with("UTF8");
        let clean = |s: &str| sanitized(s, utf8);
        let helo = clean(self.helo);
        let mut h = format!("Received: from {helo} (");
        if let Some(name) = self.peer_name {
            h.push_str(&clean(name));
            h.push(' ');
        }
        match self.peer_ip {
            IpAddr::V4(ip) => h.push_str(&format!("[{ip}])")),
            IpAddr::V6(ip) => h.push_str(&format!("[IPv6:{ip}])")),
        }
        h.push_str(&format!(
            "\r\n\tby {} (Kurier) with {} id {}",
            self.by, self.protocol, self.id
        ));
        if let Some(tls) = self.tls {
            h.push_str(&format!(
                "\r\n\t(using {} with cipher {})",
                clean(&tls.version),
                clean(&tls.cipher)
            ));
        }
        if let Some(rcpt) = self.for_rcpt {
            h.push_str(&format!("\r\n\tfor <{}>", clean(rcpt)));
        }
        h.push_str(&format!(";\r\n\t{}\r\n", self.date));
        h
    }
}

/// Keeps client-supplied text from breaking the header: no control characters, no
/// parentheses (which would end the comment), no angle brackets or semicolons, and only
/// ASCII unless `utf8`.
fn sanitized(s: &str, utf8: bool) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || "()<>;\\".contains(c) || (!utf8 && !c.is_ascii()) {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_header_shape() {
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        };
        let h = Received {
            helo: "client.test",
            peer_ip: "127.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            peer_name: Some("localhost"),
            by: "mx.test",
            protocol: "ESMTPS",
            tls: Some(&tls),
            id: "abc123",
            for_rcpt: Some("u@mx.test"),
            date: "Mon, 23 Nov 2026 09:05:03 +0000",
        }
        .to_header();
        assert_eq!(
            h,
            "Received: from client.test (localhost [127.0.0.1])\r\n\tby mx.test (Kurier) with ESMTPS id abc123\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\tfor <u@mx.test>;\r\n\tMon, 23 Nov 2026 09:05:03 +0000\r\n"
        );
    }

    #[test]
    fn hostile_helo_cannot_break_the_header() {
        let h = Received {
            helo: "evil)\r\nX-Injected: yes",
            peer_ip: "::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            peer_name: None,
            by: "mx.test",
            protocol: "SMTP",
            tls: None,
            id: "q",
            for_rcpt: None,
            date: "d",
        }
        .to_header();
        assert!(h.starts_with("Received: from evil___X-Injected: yes ([IPv6:::1])\r\n"));
        assert_eq!(h.matches("\r\n").count(), 3);
    }

    #[test]
    fn a_utf8_helo_stays_out_of_a_seven_bit_message() {
        let mut r = Received {
            helo: "bücher.example",
            peer_ip: IpAddr::from([192, 0, 2, 1]),
            peer_name: Some("mx.bücher.example"),
            by: "mx.test",
            protocol: "ESMTP",
            tls: None,
            id: "q",
            for_rcpt: Some("jürgen@mx.test"),
            date: "d",
        };
        let h = r.to_header();
        assert!(h.is_ascii(), "{h}");
        assert!(h.starts_with("Received: from b_cher.example (mx.b_cher.example [192.0.2.1])"));
        r.protocol = "UTF8SMTP";
        assert!(
            r.to_header()
                .starts_with("Received: from bücher.example (mx.bücher.example")
        );
    }
}
