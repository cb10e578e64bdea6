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
    fn any_chinese_locale_asks_for_chinese_and_the_rest_for_english() {
        for l in ["zh_CN.UTF-8", "zh-TW", "ZH", "zh"] {
            assert_eq!(Lang::from_locale(l), Lang::Zh, "{l}");
        }
        for l in ["en_US.UTF-8", "C", "", "z", "POSIX"] {
            assert_eq!(Lang::from_locale(l), Lang::En, "{l}");
        }
    }
}
