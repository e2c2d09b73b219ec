//! Seeded, realistic Italian data: the same seed gives the same companies and contacts.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub const FIRST_NAMES: [&str; 24] = [
    "Giulia",
    "Marco",
    "Francesca",
    "Alessandro",
    "Chiara",
    "Luca",
    "Sara",
    "Matteo",
    "Elena",
    "Davide",
    "Martina",
    "Lorenzo",
    "Valentina",
    "Andrea",
    "Federica",
    "Simone",
    "Silvia",
    "Giorgio",
    "Anna",
    "Paolo",
    "Laura",
    "Stefano",
    "Beatrice",
    "Riccardo",
];
pub const LAST_NAMES: [&str; 24] = [
    "Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo", "Ricci", "Marino",
    "Greco", "Bruno", "Gallo", "Conti", "De Luca", "Mancini", "Costa", "Giordano", "Rizzo",
    "Lombardi", "Moretti", "Barbieri", "Fontana", "Santoro", "Mariani",
];
pub const CITIES: [&str; 16] = [
    "Milano", "Roma", "Torino", "Napoli", "Bologna", "Firenze", "Genova", "Venezia", "Verona",
    "Bari", "Palermo", "Padova", "Brescia", "Bergamo", "Trieste", "Parma",
];
const COMPANY_STEMS: [&str; 16] = [
    "Tessitura",
    "Officine",
    "Caseificio",
    "Cantine",
    "Ceramiche",
    "Logistica",
    "Arredamenti",
    "Meccanica",
    "Pastificio",
    "Distillerie",
    "Studio",
    "Edilizia",
    "Ottica",
    "Farmacia",
    "Calzaturificio",
    "Tipografia",
];
const COMPANY_NAMES: [&str; 16] = [
    "Lombarda",
    "del Garda",
    "Adriatica",
    "Valtellina",
    "San Marco",
    "Etna",
    "Dolomiti",
    "Riviera",
    "Monviso",
    "Maremma",
    "Appennino",
    "del Po",
    "Sabina",
    "Langhe",
    "Brianza",
    "Salento",
];
const LEGAL: [&str; 3] = ["S.r.l.", "S.p.A.", "S.n.c."];
pub const INDUSTRIES: [&str; 8] = [
    "MANUFACTURING",
    "FOOD_PRODUCTION",
    "WINE_AND_SPIRITS",
    "LOGISTICS_AND_SUPPLY_CHAIN",
    "RETAIL",
    "FURNITURE",
    "PRINTING",
    "HOSPITAL_HEALTH_CARE",
];

#[derive(Debug, Clone)]
pub struct SeedCompany {
    pub name: String,
    pub domain: String,
    pub city: String,
    pub industry: String,
    pub phone: String,
}

#[derive(Debug, Clone)]
pub struct SeedContact {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub phone: String,
    pub city: String,
    /// Index into the companies of the same data set.
    pub company: usize,
}

pub struct DataSet {
    pub companies: Vec<SeedCompany>,
    pub contacts: Vec<SeedContact>,
}

fn slug(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' => Some(c),
            ' ' | '-' => Some('-'),
            _ => None,
        })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

pub fn phone(rng: &mut SmallRng) -> String {
    format!(
        "+39 3{:02} {:07}",
        rng.random_range(20..99),
        rng.random_range(0..10_000_000)
    )
}

/// `companies` companies and `contacts` contacts spread over them.
pub fn generate(seed: u64, companies: usize, contacts: usize) -> DataSet {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut used = std::collections::HashSet::new();
    let companies: Vec<SeedCompany> = (0..companies)
        .map(|i| {
            let mut name;
            loop {
                name = format!(
                    "{} {} {}",
                    COMPANY_STEMS[rng.random_range(0..COMPANY_STEMS.len())],
                    COMPANY_NAMES[rng.random_range(0..COMPANY_NAMES.len())],
                    LEGAL[rng.random_range(0..LEGAL.len())]
                );
                if used.insert(name.clone()) || used.len() > 200 {
                    break;
                }
            }
            let base = slug(name.rsplit_once(' ').map_or(name.as_str(), |(b, _)| b));
            SeedCompany {
                domain: if used.len() > 200 {
                    format!("{base}-{i}.it")
                } else {
                    format!("{base}.it")
                },
                name,
                city: CITIES[rng.random_range(0..CITIES.len())].to_string(),
                industry: INDUSTRIES[rng.random_range(0..INDUSTRIES.len())].to_string(),
                phone: phone(&mut rng),
            }
        })
        .collect();
    let contacts = (0..contacts)
        .map(|i| {
            let first = FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())];
            let last = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
            let company = if companies.is_empty() {
                0
            } else {
                rng.random_range(0..companies.len())
            };
            let domain = companies
                .get(company)
                .map_or("example.it", |c| c.domain.as_str());
            SeedContact {
                first_name: first.to_string(),
                last_name: last.to_string(),
                email: format!(
                    "{}.{}{}@{domain}",
                    slug(first),
                    slug(last).replace('-', ""),
                    i + 1
                ),
                phone: phone(&mut rng),
                city: companies
                    .get(company)
                    .map_or_else(|| CITIES[0].to_string(), |c| c.city.clone()),
                company,
            }
        })
        .collect();
    DataSet {
        companies,
        contacts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_people_and_emails_are_unique() {
        let a = generate(7, 10, 50);
        let b = generate(7, 10, 50);
        assert_eq!(a.contacts[3].email, b.contacts[3].email);
        assert_eq!(a.companies[2].name, b.companies[2].name);
        let emails: std::collections::HashSet<_> = a.contacts.iter().map(|c| &c.email).collect();
        assert_eq!(emails.len(), 50);
        assert!(
            a.contacts
                .iter()
                .all(|c| c.email.is_ascii() && c.email.contains('@'))
        );
        assert_ne!(generate(8, 10, 50).contacts[3].email, a.contacts[3].email);
    }
}
