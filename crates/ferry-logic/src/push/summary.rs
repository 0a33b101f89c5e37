//! What a queued push says about its newest entry — its kind, sender, group, text — in a
//! small binary form the store keeps opaque (`PushEnqueue::summary`), and the words the
//! OS shows for it in a few languages.
//!
//! Only what the device's preview allows is written: the sender and group with preview
//! SENDER or FULL, the text with FULL only, so the queue holds no more than the push
//! will carry.

use ferry_proto::v1;

/// Longest text a push carries, in characters.
pub const MAX_TEXT_CHARS: usize = 256;

/// What the newest entry of a push is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A 1:1 message.
    Message = 1,
    /// A group message.
    Group = 2,
    /// A group message that @mentions the user.
    Mention = 3,
    /// A friend request received.
    Friend = 4,
    /// A 1:1 message was recalled (silent: the badge drops).
    Recall = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Message,
            2 => Kind::Group,
            3 => Kind::Mention,
            4 => Kind::Friend,
            5 => Kind::Recall,
            _ => return None,
        })
    }

    /// `PushData.kind`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Group => "group",
            Kind::Mention => "mention",
            Kind::Friend => "friend",
            Kind::Recall => "recall",
        }
    }
}

/// An entry worth a push, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub kind: Kind,
    /// Who sent it (the peer of a friend request, who recalled).
    pub from: String,
    pub group_id: u64,
    /// At most [`MAX_TEXT_CHARS`].
    pub text: String,
}

/// `text` cut to [`MAX_TEXT_CHARS`] characters.
pub fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((i, _)) => text[..i].to_owned(),
        None => text.to_owned(),
    }
}

/// The push-worthy reading of an entry of `me`'s inbox (`me_name` is their name), or
/// None: their own messages (sent from another device), read receipts, group events,
/// moments, friend changes other than a request received, recalls by themselves.
pub fn classify(entry: &v1::Entry, me_name: &str) -> Option<Item> {
    use v1::entry::Kind as E;
    match entry.kind.as_ref()? {
        E::Message(m) if m.from != me_name && m.group_id == 0 => Some(Item {
            kind: Kind::Message,
            from: m.from.clone(),
            group_id: 0,
            text: cut(&m.text),
        }),
        E::Friend(f) if f.kind == v1::friend_event::Kind::RequestReceived as i32 => Some(Item {
            kind: Kind::Friend,
            from: f.peer.clone(),
            group_id: 0,
            text: cut(&f.greeting),
        }),
        E::Recall(r) if r.by != me_name && r.group_id == 0 => Some(Item {
            kind: Kind::Recall,
            from: r.by.clone(),
            group_id: 0,
            text: String::new(),
        }),
        _ => None,
    }
}

/// The summary of `item` for a device whose preview is `preview` (0 none, 1 sender,
/// 2 full): version 1, kind, group id (LE), sender (u8 length), text (u16 LE length).
pub fn encode(item: &Item, preview: u8) -> Vec<u8> {
    let from = if preview >= 1 {
        item.from.as_bytes()
    } else {
        &[]
    };
    let from = &from[..from.len().min(255)];
    let text = if preview >= 2 {
        item.text.as_bytes()
    } else {
        &[]
    };
    let text = &text[..text.len().min(u16::MAX as usize)];
    let group = if preview >= 1 { item.group_id } else { 0 };
    let mut out = Vec::with_capacity(13 + from.len() + text.len());
    out.push(1);
    out.push(item.kind as u8);
    out.extend_from_slice(&group.to_le_bytes());
    out.push(from.len() as u8);
    out.extend_from_slice(from);
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text);
    out
}

/// Reads a summary back; None when it is not one this version wrote.
pub fn decode(b: &[u8]) -> Option<Item> {
    let (&[version, kind], rest) = b.split_first_chunk::<2>()?;
    if version != 1 {
        return None;
    }
    let kind = Kind::from_u8(kind)?;
    let (group, rest) = rest.split_first_chunk::<8>()?;
    let (&flen, rest) = rest.split_first()?;
    let from = rest.get(..usize::from(flen))?;
    let rest = &rest[usize::from(flen)..];
    let (tlen, rest) = rest.split_first_chunk::<2>()?;
    let text = rest.get(..usize::from(u16::from_le_bytes(*tlen)))?;
    Some(Item {
        kind,
        from: String::from_utf8_lossy(from).into_owned(),
        group_id: u64::from_le_bytes(*group),
        text: String::from_utf8_lossy(text).into_owned(),
    })
}

/// The words of one language.
pub struct Words {
    pub new_message: &'static str,
    /// `{n}` stands for the count.
    pub new_messages: &'static str,
    pub mentioned: &'static str,
    pub friend_request: &'static str,
}

const EN: Words = Words {
    new_message: "New message",
    new_messages: "{n} new messages",
    mentioned: "You were mentioned",
    friend_request: "New friend request",
};

/// (language, words): the language is the tag's first part (`de-AT` → `de`).
const WORDS: &[(&str, Words)] = &[
    ("en", EN),
    (
        "de",
        Words {
            new_message: "Neue Nachricht",
            new_messages: "{n} neue Nachrichten",
            mentioned: "Du wurdest erwähnt",
            friend_request: "Neue Freundschaftsanfrage",
        },
    ),
    (
        "fr",
        Words {
            new_message: "Nouveau message",
            new_messages: "{n} nouveaux messages",
            mentioned: "Vous avez été mentionné",
            friend_request: "Nouvelle demande d'ami",
        },
    ),
    (
        "es",
        Words {
            new_message: "Mensaje nuevo",
            new_messages: "{n} mensajes nuevos",
            mentioned: "Te mencionaron",
            friend_request: "Nueva solicitud de amistad",
        },
    ),
    (
        "zh",
        Words {
            new_message: "新消息",
            new_messages: "{n} 条新消息",
            mentioned: "有人@了你",
            friend_request: "新的好友请求",
        },
    ),
    (
        "ja",
        Words {
            new_message: "新しいメッセージ",
            new_messages: "{n} 件の新しいメッセージ",
            mentioned: "メンションされました",
            friend_request: "新しい友達リクエスト",
        },
    ),
];

/// The words for a BCP 47 tag; English when the language is not known.
pub fn words(locale: &str) -> &'static Words {
    let lang = locale.split(['-', '_']).next().unwrap_or("");
    WORDS
        .iter()
        .find(|(l, _)| l.eq_ignore_ascii_case(lang))
        .map(|(_, w)| w)
        .unwrap_or(&EN)
}

/// The alert for a push of `count` entries whose newest is `item` (as its summary kept
/// it), for a device with `preview`: with NONE only what happened ("New message"), with
/// SENDER who, with FULL who and what.
pub fn alert(item: &Item, count: u32, preview: u8, locale: &str) -> ferry_push::Alert {
    let w = words(locale);
    let what = match item.kind {
        Kind::Friend => w.friend_request,
        Kind::Mention => w.mentioned,
        _ if count > 1 => "",
        _ => w.new_message,
    };
    let what = if what.is_empty() {
        w.new_messages.replace("{n}", &count.to_string())
    } else {
        what.to_owned()
    };
    if preview == 0 || item.from.is_empty() {
        return ferry_push::Alert {
            title: what,
            body: String::new(),
        };
    }
    let body = if preview >= 2 && !item.text.is_empty() {
        item.text.clone()
    } else {
        what
    };
    ferry_push::Alert {
        title: item.from.clone(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> Item {
        Item {
            kind: Kind::Mention,
            from: "ann".into(),
            group_id: 77,
            text: "hi @bob".into(),
        }
    }

    #[test]
    fn a_summary_keeps_only_what_the_preview_allows() {
        let full = decode(&encode(&item(), 2)).unwrap();
        assert_eq!(full, item());
        let sender = decode(&encode(&item(), 1)).unwrap();
        assert_eq!((sender.from.as_str(), sender.group_id), ("ann", 77));
        assert!(sender.text.is_empty());
        let none = decode(&encode(&item(), 0)).unwrap();
        assert_eq!(
            (
                none.kind,
                none.from.as_str(),
                none.group_id,
                none.text.as_str()
            ),
            (Kind::Mention, "", 0, "")
        );
        // Not a summary: refused, never a panic.
        for bad in [
            &[][..],
            &[1],
            &[2, 1],
            &[1, 9, 0],
            &[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 5],
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn text_is_cut_by_characters() {
        let long: String = "é".repeat(300);
        assert_eq!(cut(&long).chars().count(), MAX_TEXT_CHARS);
        assert_eq!(cut("short"), "short");
    }

    #[test]
    fn alerts_follow_the_preview_and_the_locale() {
        let msg = Item {
            kind: Kind::Message,
            ..item()
        };
        let a = alert(&msg, 1, 0, "de-AT");
        assert_eq!((a.title.as_str(), a.body.as_str()), ("Neue Nachricht", ""));
        let a = alert(&msg, 3, 0, "xx");
        assert_eq!(a.title, "3 new messages");
        let a = alert(&msg, 1, 1, "en");
        assert_eq!((a.title.as_str(), a.body.as_str()), ("ann", "New message"));
        let a = alert(&msg, 1, 2, "en");
        assert_eq!((a.title.as_str(), a.body.as_str()), ("ann", "hi @bob"));
    }
}
