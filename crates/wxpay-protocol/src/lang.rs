//! The two languages wxpay explains itself in: the signature doctors write every finding in
//! English and in Chinese, and the caller chooses which to show.

/// A language of explanations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lang {
    /// English.
    #[default]
    En,
    /// Simplified Chinese.
    Zh,
}

impl Lang {
    /// The language a code names: `en`, or `zh` (also `zh-CN`).
    pub fn parse(code: &str) -> Option<Lang> {
        match code {
            "zh" | "zh-CN" => Some(Lang::Zh),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// The language's code: `en` or `zh`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    /// The language a browser asks for in `Accept-Language`: Chinese when it names Chinese
    /// before English, or Chinese and no English; English otherwise.
    pub fn from_accept_language(header: &str) -> Lang {
        let header = header.to_ascii_lowercase();
        match (header.find("zh"), header.find("en")) {
            (Some(zh), Some(en)) if zh < en => Lang::Zh,
            (Some(_), None) => Lang::Zh,
            _ => Lang::En,
        }
    }

    /// The language a locale name asks for (`zh_CN.UTF-8`, `zh-TW`, `en_US`, `C`, …):
    /// Chinese for any `zh`, English otherwise.
    pub fn from_locale(locale: &str) -> Lang {
        if locale.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("zh")) {
            Lang::Zh
        } else {
            Lang::En
        }
    }
}

/// One explanation, in English and in Chinese.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    /// In English.
    pub en: String,
    /// In Chinese.
    pub zh: String,
}

impl Text {
    /// The explanation `en`, in Chinese `zh`.
    pub fn new(en: impl Into<String>, zh: impl Into<String>) -> Text {
        Text {
            en: en.into(),
            zh: zh.into(),
        }
    }

    /// The explanation in `lang`.
    pub fn get(&self, lang: Lang) -> &str {
        match lang {
            Lang::En => &self.en,
            Lang::Zh => &self.zh,
        }
    }

    /// This explanation followed by `more`, in each language.
    pub fn then(&self, more: &Text) -> Text {
        Text::new(format!("{}{}", self.en, more.en), format!("{}{}", self.zh, more.zh))
    }

    /// Whether the English or the Chinese text contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.en.contains(needle) || self.zh.contains(needle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_gets_chinese_when_it_asks_for_chinese_before_english() {
        assert_eq!(Lang::from_accept_language("zh-CN,zh;q=0.9,en;q=0.8"), Lang::Zh);
        assert_eq!(Lang::from_accept_language("en-US,zh-CN;q=0.8"), Lang::En);
        assert_eq!(Lang::from_accept_language("fr, zh-TW"), Lang::Zh);
        assert_eq!(Lang::from_accept_language(""), Lang::En);
        assert_eq!(Lang::parse("zh-CN"), Some(Lang::Zh));
        assert_eq!(Lang::parse("fr"), None);
        assert_eq!(Lang::parse(Lang::Zh.code()), Some(Lang::Zh));
    }

    #[test]
    fn any_chinese_locale_asks_for_chinese_and_the_rest_for_english() {
        for l in ["zh_CN.UTF-8", "zh-TW", "ZH", "zh"] {
            assert_eq!(Lang::from_locale(l), Lang::Zh, "{l}");
        }
        for l in ["en_US.UTF-8", "C", "", "z", "POSIX"] {
            assert_eq!(Lang::from_locale(l), Lang::En, "{l}");
        }
    }
}
