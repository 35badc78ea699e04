//! Money: an integer quantity of minor units of one currency.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An ISO-4217-style three-letter currency code. Stored as three bytes so
/// that amounts are `Copy` and compare cheaply.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Currency(pub [u8; 3]);

impl Currency {
    /// US dollars.
    pub const USD: Currency = Currency(*b"USD");
    /// Euros.
    pub const EUR: Currency = Currency(*b"EUR");
    /// Pounds sterling.
    pub const GBP: Currency = Currency(*b"GBP");

    /// The currency with the given three-letter code, or `None` if `code` is
    /// not three ASCII upper-case letters.
    pub fn parse(code: &str) -> Option<Currency> {
        let bytes: [u8; 3] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_uppercase)
            .then_some(Currency(bytes))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A quantity of money in minor units (cents for USD). Integer arithmetic
/// only: conservation checks must be exact.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Amount {
    /// Minor units (e.g. cents).
    pub quantity: u64,
    /// What the units are of.
    pub currency: Currency,
}

impl Amount {
    /// `quantity` minor units of `currency`.
    pub fn new(quantity: u64, currency: Currency) -> Self {
        Self { quantity, currency }
    }

    /// `whole` major units (e.g. dollars) of `currency`, saturating.
    pub fn whole(whole: u64, currency: Currency) -> Self {
        Self::new(whole.saturating_mul(100), currency)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:02} {}",
            self.quantity / 100,
            self.quantity % 100,
            self.currency
        )
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!(Currency::parse("USD"), Some(Currency::USD));
        assert_eq!(Currency::parse("usd"), None);
        assert_eq!(Currency::parse("USDX"), None);
        assert_eq!(
            Amount::new(123_456, Currency::EUR).to_string(),
            "1234.56 EUR"
        );
    }
}
