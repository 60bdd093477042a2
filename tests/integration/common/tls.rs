//! Throwaway certificates for the TLS tests; nothing is committed.

/// A throwaway CA, and certificates it signs. Nothing is committed.
pub struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pub pem: String,
}

pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        Leaf {
            cert: params.signed_by(&key, &issuer).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }
}

pub fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
