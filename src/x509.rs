//! Just enough DER to read a certificate's subject, for [`PeerInfo`](crate::PeerInfo): the
//! certificate has been verified by rustls already; this only puts its subject into words.
//! Anything unexpected gives `None`, never a panic.

/// The subject of a DER certificate as `CN=name, O=org`, attributes in certificate order.
pub(crate) fn subject(cert: &[u8]) -> Option<String> {
    let (cert, _) = element(cert, 0x30)?;
    let (mut tbs, _) = element(cert, 0x30)?;
    // version [0] EXPLICIT, optional
    if tbs.first() == Some(&0xa0) {
        tbs = any(tbs)?.1;
    }
    // serialNumber, signature, issuer, validity, then subject
    for _ in 0..4 {
        tbs = any(tbs)?.1;
    }
    let (mut name, _) = element(tbs, 0x30)?;
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (mut rdn, rest) = element(name, 0x31)?;
        name = rest;
        let mut attributes = Vec::new();
        while !rdn.is_empty() {
            let (atv, rest) = element(rdn, 0x30)?;
            rdn = rest;
            let (oid, value) = element(atv, 0x06)?;
            let (tag, value, _) = tlv(value)?;
            attributes.push(format!("{}={}", oid_name(oid), escape(&text(tag, value))));
        }
        // A multi-valued name component joins its attributes with `+` (RFC 4514).
        rdns.push(attributes.join("+"));
    }
    Some(rdns.join(", "))
}

/// A value escaped as RFC 4514 asks, so that one attribute cannot read as several (`,`, `+`,
/// `=` and the other specials get a backslash), and control characters in hex (`\0a`), so
/// that a certificate cannot put line breaks or terminal escapes into logs.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// One element: tag, contents, and what follows it.
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// An element that must have `tag`: its contents and what follows.
fn element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match tlv(der)? {
        (t, contents, rest) if t == tag => Some((contents, rest)),
        _ => None,
    }
}

/// Any element: its contents and what follows.
fn any(der: &[u8]) -> Option<(&[u8], &[u8])> {
    tlv(der).map(|(_, contents, rest)| (contents, rest))
}

/// The short name of a well-known attribute, or the OID in dotted form.
fn oid_name(oid: &[u8]) -> String {
    let known = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_owned();
    }
    let mut arcs = Vec::new();
    let mut value = 0u64;
    for (i, &b) in oid.iter().enumerate() {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        } else if i == oid.len() - 1 || value > u64::MAX >> 7 {
            return "?".to_owned();
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A directory string's text; other types in hex.
fn text(tag: u8, value: &[u8]) -> String {
    match tag {
        // UTF8String, PrintableString, TeletexString, IA5String
        0x0c | 0x13 | 0x14 | 0x16 => String::from_utf8_lossy(value).into_owned(),
        // BMPString: UTF-16BE
        0x1e => char::decode_utf16(
            value
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect(),
        _ => {
            let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
            format!("#{hex}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_subject_reads_back() {
        let mut params = rcgen::CertificateParams::new(vec!["node-1.example".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example Org");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ingest-1");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject(cert.der()).as_deref(),
            Some("O=Example Org, CN=ingest-1")
        );
    }

    #[test]
    fn truncated_or_garbage_input_gives_none_without_panicking() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        // Cut anywhere: read or refused, never a panic.
        for cut in 0..der.len() {
            let _ = subject(&der[..cut]);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let len = (state % 300) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = subject(&bytes);
        }
    }

    #[test]
    fn values_are_escaped_so_that_one_attribute_cannot_read_as_two() {
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mallory, O=Admins\n\u{1b}[31m");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject(cert.der()).as_deref(),
            Some("CN=mallory\\, O\\=Admins\\0a\\1b[31m")
        );
        assert_eq!(escape(" #a "), "\\ #a\\ ");
    }

    #[test]
    fn unknown_attributes_show_their_oid() {
        assert_eq!(oid_name(&[0x2b, 0x06, 0x01, 0x04, 0x01]), "1.3.6.1.4.1");
        assert_eq!(oid_name(&[0x55, 0x04, 0x03]), "CN");
    }
}
