//! Names, contact details and national identifiers shared by patients and staff.

use crate::catalog::{NAME_ORIGINS, NameOrigin};
use crate::rng::SynthRng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gender {
    Female,
    Male,
}

impl Gender {
    pub(crate) fn fhir_code(self) -> &'static str {
        match self {
            Self::Female => "female",
            Self::Male => "male",
        }
    }
}

/// A person's generated name, with the origin it was drawn from.
#[derive(Debug, Clone)]
pub(crate) struct PersonName {
    pub(crate) origin: &'static NameOrigin,
    pub(crate) gender: Gender,
    pub(crate) given: Vec<&'static str>,
    pub(crate) family: &'static str,
}

impl PersonName {
    pub(crate) fn draw(rng: &mut SynthRng) -> Self {
        let origin = rng.pick_weighted(NAME_ORIGINS, |origin| origin.weight);
        let gender = if rng.chance(50) {
            Gender::Female
        } else {
            Gender::Male
        };
        let given_pool = match gender {
            Gender::Female => origin.female_given,
            Gender::Male => origin.male_given,
        };
        let mut given = vec![*rng.pick(given_pool)];
        // French civil status often lists a second given name.
        if rng.chance(25) {
            let second = *rng.pick(given_pool);
            if second != given[0] {
                given.push(second);
            }
        }
        let family = *rng.pick(origin.family);
        Self {
            origin,
            gender,
            given,
            family,
        }
    }

    /// "Given Family", the way a person is addressed.
    pub(crate) fn display(&self, family: &str) -> String {
        format!("{} {}", self.given[0], family)
    }
}

/// Lower-case ASCII letters only, for e-mail addresses: "Lefèvre" → "lefevre",
/// "O'Connor" → "oconnor". Letters outside the table are dropped (a test keeps the table
/// complete for every name the catalog holds).
pub(crate) fn ascii_slug(text: &str) -> String {
    let mut slug = String::with_capacity(text.len());
    for character in text.chars() {
        let folded = match character {
            'a'..='z' | '0'..='9' => Some(character),
            'A'..='Z' => Some(character.to_ascii_lowercase()),
            'à' | 'â' | 'ä' | 'á' | 'ã' | 'ą' | 'ạ' | 'ấ' | 'ầ' | 'À' | 'Á' | 'Â' => {
                Some('a')
            }
            'ç' | 'ć' | 'Ç' => Some('c'),
            'đ' | 'Đ' => Some('d'),
            'é' | 'è' | 'ê' | 'ë' | 'ę' | 'ễ' | 'É' | 'È' => Some('e'),
            'ğ' => Some('g'),
            'î' | 'ï' | 'í' | 'ı' | 'İ' => Some('i'),
            'ł' | 'Ł' => Some('l'),
            'ñ' | 'ń' => Some('n'),
            'ô' | 'ö' | 'ó' | 'õ' | 'ọ' | 'Ö' | 'Ó' => Some('o'),
            'ś' | 'ş' | 'Ş' => Some('s'),
            'ù' | 'û' | 'ü' | 'ú' | 'ũ' | 'ứ' | 'Ü' => Some('u'),
            'ÿ' => Some('y'),
            'ź' | 'ż' | 'Ż' => Some('z'),
            _ => None,
        };
        slug.extend(folded);
    }
    slug
}

/// The Luhn check digit of a digit string (used by RPPS numbers).
pub(crate) fn luhn_check_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .chars()
        .rev()
        .enumerate()
        .map(|(position, character)| {
            let digit = character.to_digit(10).expect("Luhn input is digits only");
            if position % 2 == 0 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// The two-digit key of a French NIR: 97 minus the 13-digit number modulo 97.
pub(crate) fn nir_key(first_13_digits: &str) -> u64 {
    let number: u64 = first_13_digits.parse().expect("a NIR body is 13 digits");
    97 - number % 97
}

/// A phone number in the ranges the French regulator (ARCEP) reserves for fiction, so that no
/// real person is ever called: mobiles `06 39 98 xx xx`, landlines `01 99 00 xx xx`.
pub(crate) fn fictional_phone(rng: &mut SynthRng, mobile: bool) -> String {
    let prefix = if mobile { "+33 6 39 98" } else { "+33 1 99 00" };
    format!("{prefix} {:02} {:02}", rng.below(100), rng.below(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_name_folds_to_ascii_without_losing_a_letter() {
        for origin in NAME_ORIGINS {
            for name in origin
                .female_given
                .iter()
                .chain(origin.male_given)
                .chain(origin.family)
            {
                let letters = name.chars().filter(|c| c.is_alphanumeric()).count();
                let slug = ascii_slug(name);
                assert_eq!(slug.len(), letters, "{name} folds to {slug}");
                assert!(
                    slug.bytes().all(|b| b.is_ascii_lowercase()),
                    "{name} folds to {slug}"
                );
            }
        }
        assert_eq!(ascii_slug("Lefèvre"), "lefevre");
        assert_eq!(ascii_slug("O'Connor"), "oconnor");
        assert_eq!(ascii_slug("Le Gall"), "legall");
    }

    #[test]
    fn luhn_matches_known_numbers() {
        // 7992739871 → 3 is the textbook Luhn example.
        assert_eq!(luhn_check_digit("7992739871"), 3);
        assert_eq!(luhn_check_digit("0"), 0);
    }

    #[test]
    fn nir_key_is_97_minus_the_remainder() {
        // 1850578006084 = 97 × 19_078_123_774 + 6, so the key is 91.
        assert_eq!(nir_key("1850578006084"), 91);
        assert_eq!(nir_key("2000000000000"), 97 - 2_000_000_000_000 % 97);
    }

    #[test]
    fn fictional_phones_stay_in_the_reserved_ranges() {
        let mut rng = SynthRng::for_stream(3, 0, 0);
        for _ in 0..100 {
            assert!(fictional_phone(&mut rng, true).starts_with("+33 6 39 98 "));
            assert!(fictional_phone(&mut rng, false).starts_with("+33 1 99 00 "));
        }
    }
}
