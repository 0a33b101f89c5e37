//! Every protobuf request body the server decodes (long link and short link): any bytes
//! decode to a value or an error, never a panic, and a decoded value re-encodes and
//! decodes to itself.
#![no_main]
use ferry_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(m) = M::decode(data) {
        let again = M::decode(&m.encode_to_vec()[..]).expect("re-encoded value decodes");
        assert_eq!(m, again);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 24 {
        0 => check::<v1::LoginReq>(body),
        1 => check::<v1::Heartbeat>(body),
        2 => check::<v1::SendMsg>(body),
        3 => check::<v1::SyncReq>(body),
        4 => check::<v1::GroupSyncReq>(body),
        5 => check::<v1::RecallReq>(body),
        6 => check::<v1::ReadReq>(body),
        7 => check::<v1::Typing>(body),
        8 => check::<v1::RegisterReq>(body),
        9 => check::<v1::AuthReq>(body),
        10 => check::<v1::LogoutReq>(body),
        11 => check::<v1::FindUserReq>(body),
        12 => check::<v1::FriendRequestReq>(body),
        13 => check::<v1::FriendActionReq>(body),
        14 => check::<v1::FriendListReq>(body),
        15 => check::<v1::AvatarSetReq>(body),
        16 => check::<v1::ReportReq>(body),
        17 => check::<v1::MomentPostReq>(body),
        18 => check::<v1::MomentTimelineReq>(body),
        19 => {
            check::<v1::MomentLikeReq>(body);
            check::<v1::MomentCommentReq>(body);
            check::<v1::MomentDeleteReq>(body);
        }
        20 => {
            check::<v1::GroupCreateReq>(body);
            check::<v1::GroupMembersReq>(body);
            check::<v1::GroupReq>(body);
            check::<v1::GroupUpdateReq>(body);
            check::<v1::GroupRoleReq>(body);
            check::<v1::GroupReadsReq>(body);
        }
        21 => {
            check::<v1::MediaCreateReq>(body);
            check::<v1::MediaChunkReq>(body);
            check::<v1::MediaStatusReq>(body);
            check::<v1::MediaFinishReq>(body);
        }
        22 => check::<v1::PasswordChangeReq>(body),
        _ => check::<v1::Empty>(body),
    }
});
