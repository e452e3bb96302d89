//! The countries a tenant may allow (CLD-74): the EU member states and the countries the EU has
//! granted an adequacy decision. Any other code is refused by the CRD schema itself.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! countries {
    ($( $code:ident => $name:literal, $standing:ident; )*) => {
        /// ISO 3166-1 alpha-2 code of a country where a tenant's data may live.
        #[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Country { $( $code, )* }

        impl Country {
            pub const ALL: &'static [Country] = &[$( Country::$code, )*];

            pub fn code(self) -> &'static str {
                match self { $( Country::$code => stringify!($code), )* }
            }

            pub fn name(self) -> &'static str {
                match self { $( Country::$code => $name, )* }
            }

            pub fn standing(self) -> Standing {
                match self { $( Country::$code => Standing::$standing, )* }
            }
        }
    };
}

/// Why a country may hold a tenant's data at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// An EU member state: allowed by default.
    EuMember,
    /// An EU adequacy decision: allowed only when the tenant lists it.
    Adequacy,
}

countries! {
    AT => "Austria", EuMember;
    BE => "Belgium", EuMember;
    BG => "Bulgaria", EuMember;
    CY => "Cyprus", EuMember;
    CZ => "Czechia", EuMember;
    DE => "Germany", EuMember;
    DK => "Denmark", EuMember;
    EE => "Estonia", EuMember;
    ES => "Spain", EuMember;
    FI => "Finland", EuMember;
    FR => "France", EuMember;
    GR => "Greece", EuMember;
    HR => "Croatia", EuMember;
    HU => "Hungary", EuMember;
    IE => "Ireland", EuMember;
    IT => "Italy", EuMember;
    LT => "Lithuania", EuMember;
    LU => "Luxembourg", EuMember;
    LV => "Latvia", EuMember;
    MT => "Malta", EuMember;
    NL => "Netherlands", EuMember;
    PL => "Poland", EuMember;
    PT => "Portugal", EuMember;
    RO => "Romania", EuMember;
    SE => "Sweden", EuMember;
    SI => "Slovenia", EuMember;
    SK => "Slovakia", EuMember;
    AD => "Andorra", Adequacy;
    AR => "Argentina", Adequacy;
    BR => "Brazil", Adequacy;
    CA => "Canada (commercial organisations)", Adequacy;
    CH => "Switzerland", Adequacy;
    FO => "Faroe Islands", Adequacy;
    GB => "United Kingdom", Adequacy;
    GG => "Guernsey", Adequacy;
    IL => "Israel", Adequacy;
    IM => "Isle of Man", Adequacy;
    JE => "Jersey", Adequacy;
    JP => "Japan", Adequacy;
    KR => "Republic of Korea", Adequacy;
    NZ => "New Zealand", Adequacy;
    US => "United States (Data Privacy Framework certified organisations only)", Adequacy;
    UY => "Uruguay", Adequacy;
}

impl Country {
    /// The default allow-list: the 27 EU member states.
    pub fn eu_members() -> Vec<Country> {
        Country::ALL
            .iter()
            .copied()
            .filter(|c| c.standing() == Standing::EuMember)
            .collect()
    }
}

impl std::fmt::Display for Country {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eu_has_27_members_and_16_adequacy_decisions() {
        let eu = Country::eu_members();
        assert_eq!(eu.len(), 27);
        let adequacy = Country::ALL
            .iter()
            .filter(|c| c.standing() == Standing::Adequacy)
            .count();
        assert_eq!(adequacy, 16);
        // Greece is GR in ISO 3166 even though the EU writes EL.
        assert!(eu.contains(&Country::GR));
        assert!(!eu.contains(&Country::GB));
    }

    #[test]
    fn codes_round_trip_through_serde() {
        for c in Country::ALL {
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.code()));
            let back: Country = serde_json::from_str(&json).unwrap();
            assert_eq!(back, *c);
        }
        assert!(serde_json::from_str::<Country>("\"CN\"").is_err());
    }
}
