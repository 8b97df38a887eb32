//! Validation and normalisation of what kiosks and readers send: tag ids, plates, resident
//! ID numbers, phone numbers. Every failure names the field and the reason, because the
//! message reaches a kiosk operator with an owner at the counter.

use crate::error::RegistryError;

/// An EPC-96 tag id: 96 bits, written as 24 hex digits (upper case when shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagId(u128);

impl TagId {
    /// Parses 24 hex digits, any case; surrounding white space is ignored.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 24 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(Self)
    }

    /// Like [`TagId::parse`], with an INVALID_ARGUMENT error naming `field`.
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, RegistryError> {
        Self::parse(s)
            .ok_or_else(|| RegistryError::invalid(field, "must be an EPC-96 tag id: 24 hex digits"))
    }

    pub fn as_u128(self) -> u128 {
        self.0
    }
}

/// Hashes a tag id (as `u128` or [`TagId`]) with one multiply, for in-memory maps keyed by
/// registered tags only: their keys are not chosen by whoever sends readings, so SipHash's
/// flooding resistance buys nothing there. Do not key a map of unchecked input with it.
#[derive(Debug, Default, Clone, Copy)]
pub struct TagHasher(u64);

impl std::hash::Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 =
            ((v as u64) ^ ((v >> 64) as u64).rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// [`TagHasher`] for `HashMap::with_hasher`.
pub type TagBuildHasher = std::hash::BuildHasherDefault<TagHasher>;

impl std::fmt::Display for TagId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:024X}", self.0)
    }
}

/// Normalises a plate (trim, upper case, no spaces or separators) and checks its shape:
/// one to three district characters (CJK), then 4 to 8 ASCII letters or digits.
pub fn plate(field: &'static str, raw: &str) -> Result<String, RegistryError> {
    let normalised: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '·' | '-' | '.' | '•'))
        .flat_map(char::to_uppercase)
        .collect();
    if normalised.is_empty() {
        return Err(RegistryError::invalid(field, "is required"));
    }
    let district = normalised.chars().take_while(|c| !c.is_ascii()).count();
    let rest: Vec<char> = normalised.chars().skip(district).collect();
    if !(1..=3).contains(&district)
        || !normalised.chars().take(district).all(is_cjk)
        || !(4..=8).contains(&rest.len())
        || !rest.iter().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(RegistryError::invalid(
            field,
            "must be 1-3 district characters followed by 4-8 letters or digits, e.g. 潮阳A12345",
        ));
    }
    Ok(normalised)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF)
}

/// Checks an 18-character resident ID number (GB 11643): 17 digits and a check character
/// (digit or X), a valid birth date, and the ISO 7064 MOD 11-2 check. Returns it upper case.
pub fn resident_id(field: &'static str, raw: &str) -> Result<String, RegistryError> {
    let id = raw.trim().to_ascii_uppercase();
    let bytes = id.as_bytes();
    if bytes.len() != 18
        || !bytes[..17].iter().all(u8::is_ascii_digit)
        || !(bytes[17].is_ascii_digit() || bytes[17] == b'X')
    {
        return Err(RegistryError::invalid(
            field,
            "must be 18 characters: 17 digits then a digit or X",
        ));
    }
    let digit = |i: usize| u32::from(bytes[i] - b'0');
    let year = (6..10).fold(0, |acc, i| acc * 10 + digit(i));
    let month = digit(10) * 10 + digit(11);
    let day = digit(12) * 10 + digit(13);
    if !valid_date(year, month, day) {
        return Err(RegistryError::invalid(field, "has an invalid birth date"));
    }
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let sum: u32 = WEIGHTS.iter().enumerate().map(|(i, w)| digit(i) * w).sum();
    if CHECK[(sum % 11) as usize] != bytes[17] {
        return Err(RegistryError::invalid(field, "check digit does not match"));
    }
    Ok(id)
}

fn valid_date(year: u32, month: u32, day: u32) -> bool {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1900..=2100).contains(&year) && (1..=days).contains(&day)
}

/// Checks a mainland mobile number: 11 digits starting 13-19. Spaces and dashes are removed.
pub fn phone(field: &'static str, raw: &str) -> Result<String, RegistryError> {
    let digits: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    let ok = digits.len() == 11
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.starts_with('1')
        && (b'3'..=b'9').contains(&digits.as_bytes()[1]);
    if ok {
        Ok(digits)
    } else {
        Err(RegistryError::invalid(
            field,
            "must be an 11-digit mainland mobile number starting 13-19",
        ))
    }
}

/// A required free-text field: trimmed, 1 to `max` characters.
pub fn text(field: &'static str, raw: &str, max: usize) -> Result<String, RegistryError> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(RegistryError::invalid(field, "is required"));
    }
    if t.chars().count() > max {
        return Err(RegistryError::invalid(field, "is too long"));
    }
    Ok(t.to_owned())
}

/// An optional free-text field: trimmed, at most `max` characters.
pub fn optional_text(field: &'static str, raw: &str, max: usize) -> Result<String, RegistryError> {
    let t = raw.trim();
    if t.chars().count() > max {
        return Err(RegistryError::invalid(field, "is too long"));
    }
    Ok(t.to_owned())
}

/// A frame (VIN) number: 6 to 20 letters or digits, upper-cased; spaces and dashes dropped.
pub fn frame_number(field: &'static str, raw: &str) -> Result<String, RegistryError> {
    let v: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if (6..=20).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(v)
    } else {
        Err(RegistryError::invalid(
            field,
            "must be 6 to 20 letters or digits",
        ))
    }
}

/// An identifier chosen by an operator (reader, zone, unit, kiosk): 1-64 of `[A-Za-z0-9_.-]`.
/// Reader ids appear in MQTT topics, so no `/`, `+` or `#`.
pub fn ident(field: &'static str, raw: &str) -> Result<String, RegistryError> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(RegistryError::invalid(
            field,
            "must be 1-64 characters of letters, digits, '_', '.' or '-'",
        ))
    }
}

/// `440***************`: the first 3 characters of a resident ID number (the province)
/// only. The last 4 would give away the check digit and the sequence, leaving a local
/// owner's birth date as the only unknown: few enough guesses to enumerate the full number
/// through ListOwnerBikes.
pub fn mask_resident_id(id: &str) -> String {
    mask(id, 3, 0)
}

/// `陈*`: a name's first character (the family name) and a `*` for each other character.
pub fn mask_name(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => std::iter::once(first).chain(chars.map(|_| '*')).collect(),
        None => String::new(),
    }
}

/// `138****5678`: the first 3 and last 4 digits of a phone number.
pub fn mask_phone(phone: &str) -> String {
    mask(phone, 3, 4)
}

fn mask(s: &str, head: usize, tail: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= head + tail {
        return "*".repeat(chars.len());
    }
    let mut out: String = chars[..head].iter().collect();
    out.extend(std::iter::repeat_n('*', chars.len() - head - tail));
    out.extend(&chars[chars.len() - tail..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_ids() {
        let t = TagId::parse(" e2801160600002070000abcd ").unwrap();
        assert_eq!(t.to_string(), "E2801160600002070000ABCD");
        assert!(TagId::parse("E2801160600002070000ABC").is_none());
        assert!(TagId::parse("E2801160600002070000ABCG").is_none());
        assert!(TagId::parse("+2801160600002070000ABCD").is_none());
    }

    #[test]
    fn plates() {
        assert_eq!(plate("plate", " 潮阳 a1234-5 ").unwrap(), "潮阳A12345");
        assert!(plate("plate", "").is_err());
        assert!(plate("plate", "A12345").is_err());
        assert!(plate("plate", "潮阳A1").is_err());
        assert!(plate("plate", "潮阳A12$45").is_err());
    }

    #[test]
    fn resident_ids() {
        // A well-known valid specimen (check digit X).
        assert_eq!(
            resident_id("id", "11010519491231002x").unwrap(),
            "11010519491231002X"
        );
        assert!(resident_id("id", "110105194912310021").is_err()); // check digit
        assert!(resident_id("id", "110105194902300028").is_err()); // 30 February
        assert!(resident_id("id", "1101051949123100").is_err()); // length
    }

    #[test]
    fn phones_and_masks() {
        assert_eq!(phone("p", "138 1234-5678").unwrap(), "13812345678");
        assert!(phone("p", "12812345678").is_err());
        assert!(phone("p", "1381234567").is_err());
        assert_eq!(mask_phone("13812345678"), "138****5678");
        assert_eq!(mask_resident_id("440513199001011234"), "440***************");
        assert_eq!(mask_name("黄敏"), "黄*");
        assert_eq!(mask_name("欧阳小明"), "欧***");
        assert_eq!(mask_name(""), "");
    }

    #[test]
    fn idents() {
        assert!(ident("reader_id", "rd-001.a").is_ok());
        for bad in ["", "a/b", "a+b", "#", &"x".repeat(65)] {
            assert!(ident("reader_id", bad).is_err(), "{bad}");
        }
    }
}
