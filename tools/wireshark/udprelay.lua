-- udprelay.lua: a Wireshark / tshark dissector for the udprelay wire
-- protocol, version 1 (docs/PROTOCOL.md; the reference is src/wire/).
--
--   wireshark -X lua_script:tools/wireshark/udprelay.lua
--   tshark -X lua_script:tools/wireshark/udprelay.lua -r capture.pcapng -Y udprelay
--
-- or copy this file to the personal Lua plugins directory (Help > About
-- Wireshark > Folders, "Personal Lua Plugins"; ~/.local/lib/wireshark/plugins
-- on Linux).
--
-- It finds udprelay datagrams on any UDP port by their first three bytes
-- ("UR", version 1): heuristic "udprelay_udp" (--disable-heuristic
-- udprelay_udp to turn it off). Wireshark tries a port's own dissector
-- before heuristics, so where a port is also another protocol's, add
-- -o udp.try_heuristic_first:TRUE. Decode As "udprelay" on a UDP port
-- (tshark -d udp.port==7070,udprelay) takes every datagram of that port,
-- and says of one that is not udprelay that it is not.
--
-- A capture on the sending host (and on loopback) shows a UDP GSO batch,
-- as the relay sends, as one record of several datagrams back to back (a
-- receiver's GRO likewise). Each is shown as a udprelay tree of its own
-- (udprelay.batch numbers them) and the Info column joins them with " | ":
-- a plain datagram ends where "UR" and version 1 stand where a frame would
-- start (0x55 is no frame type), a sealed one where the next sealed
-- datagram of its session, nonce one more, starts.
--
-- Every frame of a datagram is shown, in order, until one does not decode:
-- that one gets the expert info udprelay.malformed (as the relay stops
-- there, so does the dissector). Sealed datagrams (header flag AUTH) show
-- their header, session, nonce, ciphertext and tag; their frames cannot be
-- read without the session's keys (expert info udprelay.sealed).
--
-- Fields (display filter names). Integers are shown as they are on the
-- wire (little-endian, unsigned); times are nanoseconds (or seconds, for
-- the token) since the Unix epoch, the date appended.
--
-- Datagram header
--   udprelay.magic               "UR"
--   udprelay.version             1
--   udprelay.flags               header flags; udprelay.flags.auth (bit 0),
--                                udprelay.flags.reserved (bits 1-7)
--   udprelay.key_id              key id of a plain datagram (must be 0)
--   udprelay.batch               datagram k of a record holding several
-- Sealed datagram (flags = AUTH)
--   udprelay.sealed.session      the session id (the header's key id field)
--   udprelay.sealed.nonce        the sender's counter (u64)
--   udprelay.sealed.ciphertext   the encrypted frames
--   udprelay.sealed.ciphertext_len  their length (generated)
--   udprelay.sealed.tag          the 16-byte AES-GCM tag
-- Frame header (one udprelay.frame subtree per frame)
--   udprelay.frame               the frame (its summary as text)
--   udprelay.frame.type          frame type (PUBLISH, SUBSCRIBE, ... MATCHED)
--   udprelay.frame.flags         per-type flags; udprelay.frame.flags.more
--                                (bit 0, RELIABLE_PUBLISH), .origin (bit 1,
--                                SUBSCRIBE, DELIVER, DELIVER_FRAGMENT),
--                                .reserved (bits 2-7)
--   udprelay.frame.length        body length
-- Fields of the frame bodies (each used by every frame that has it)
--   udprelay.channel_len, udprelay.channel      channel name
--   udprelay.payload                            message bytes
--   udprelay.sub_id                             subscription id
--   udprelay.mode                               0 unreliable, 1 reliable
--   udprelay.start_kind                         0 latest, 1 earliest,
--                                               2 offset, 3 resume
--   udprelay.start_offset                       SUBSCRIBE start offset
--   udprelay.since                              SUBSCRIBE resume: ns
--   udprelay.group_len, udprelay.group          queue group
--   udprelay.resume.count                       resume vector entries
--   udprelay.origin                             an origin (subtree):
--     udprelay.origin.kind (0 relay, 1 session), udprelay.origin.id,
--     udprelay.origin.position
--   udprelay.offset                             a message's offset
--   udprelay.timestamp                          when the relay stored it, ns
--   udprelay.first_offset, udprelay.next_offset SUBSCRIBED, MATCHED
--   udprelay.lease_ms                           SUBSCRIBED
--   udprelay.channel_sub_id                     MATCHED
--   udprelay.ack.kind (0 publish, 1 subscription, 2 pieces),
--   udprelay.ack.id, udprelay.ack.cumulative, udprelay.ack.window,
--   udprelay.ack.range_count, udprelay.ack.range (subtree):
--     udprelay.ack.range.start, udprelay.ack.range.end
--   udprelay.session, udprelay.seq, udprelay.acked_below   RELIABLE_PUBLISH
--   udprelay.msg_id, udprelay.fragment.index, udprelay.fragment.count
--                                                           FRAGMENT
--   udprelay.fragment.total, udprelay.fragment.at           DELIVER_FRAGMENT
--   udprelay.chunk                                          a piece's bytes
--   udprelay.token; udprelay.token.issued, udprelay.token.mac (this
--                                relay's layout)   ADDRESS_TOKEN, VALIDATE
--   udprelay.handshake.key_id, udprelay.handshake.expires   HANDSHAKE
--   udprelay.handshake.session                              HANDSHAKE_REPLY
--   udprelay.handshake.message (udprelay.handshake.ephemeral,
--                               udprelay.handshake.tag)      both
--   udprelay.nonce, udprelay.load                            PING, PONG
--   udprelay.error.code, udprelay.error.reason               ERROR
--   udprelay.stats.cursor, udprelay.stats.padding            STATS_REQUEST
--   udprelay.stats.cursor, udprelay.stats.next, udprelay.stats.entry
--     (subtree): udprelay.stats.name, udprelay.stats.value   STATS
-- Expert infos
--   udprelay.malformed           a frame or header that does not decode
--   udprelay.not_udprelay        (decode-as) no "UR" magic
--   udprelay.unsupported         a version or header flags v1 does not have
--   udprelay.sealed              the frames are encrypted
--   udprelay.unexpected          decodes, but the relay does not act on it
--                                where it is (a VALIDATE not first, frames
--                                after a HANDSHAKE, an empty STATS_REQUEST)
--   udprelay.hello               a VALIDATE of 20 zero bytes: asks for a token
--
-- Info column: the datagram's frames, e.g. "DELIVER sub=3 @42 len=5, ACK
-- subscription id=3 cum=43 win=4096"; a sealed one as "SEALED session=5
-- nonce=7 len=40" (the length of the encrypted frames).
--
-- The dissector never raises an error on any input: every length is
-- checked before it is read (and a last pcall turns anything unforeseen
-- into udprelay.malformed).

local udprelay = Proto("udprelay", "udprelay datagram relay protocol")

local HEADER_LEN = 8
local FRAME_HEADER_LEN = 4
local TOKEN_LEN = 20
local ORIGIN_LEN = 17
local NOISE_MESSAGE_LEN = 48
local SEALED_HEADER_LEN = 16
local TAG_LEN = 16
local MAX_RESUME_SOURCES = 64
local STATS_LAST_PAGE = 0xFFFFFFFF
local RELAY_SUB_IDS = 0x80000000
local FLAG_AUTH = 0x01
local FLAG_MORE = 0x01
local FLAG_ORIGIN = 0x02

local T = {
    PUBLISH = 0x01, SUBSCRIBE = 0x02, UNSUBSCRIBE = 0x03, SUBSCRIBED = 0x04,
    DELIVER = 0x05, ACK = 0x06, PING = 0x07, PONG = 0x08, ERROR = 0x09,
    STATS_REQUEST = 0x0A, STATS = 0x0B, RELIABLE_PUBLISH = 0x0C,
    FRAGMENT = 0x0D, DELIVER_FRAGMENT = 0x0E, ADDRESS_TOKEN = 0x0F,
    VALIDATE = 0x10, HANDSHAKE = 0x11, HANDSHAKE_REPLY = 0x12, MATCHED = 0x13,
}
local type_names = {}
for name, code in pairs(T) do type_names[code] = name end

-- The flags each frame type may carry (src/wire/decode.rs).
local allowed_flags = {
    [T.RELIABLE_PUBLISH] = FLAG_MORE,
    [T.SUBSCRIBE] = FLAG_ORIGIN,
    [T.DELIVER] = FLAG_ORIGIN,
    [T.DELIVER_FRAGMENT] = FLAG_ORIGIN,
}

local error_codes = {
    [1] = "malformed", [2] = "unsupported-version", [3] = "unsupported",
    [4] = "bad-channel", [5] = "too-large", [6] = "unknown-subscription",
    [7] = "limit-reached", [8] = "unavailable", [9] = "denied",
}
local modes = { [0] = "unreliable", [1] = "reliable" }
local start_kinds = { [0] = "latest", [1] = "earliest", [2] = "offset", [3] = "resume" }
local origin_kinds = { [0] = "relay", [1] = "session" }
local ack_kinds = { [0] = "publish", [1] = "subscription", [2] = "pieces" }

local f = {
    magic = ProtoField.string("udprelay.magic", "Magic"),
    version = ProtoField.uint8("udprelay.version", "Version", base.DEC),
    flags = ProtoField.uint8("udprelay.flags", "Header flags", base.HEX),
    flags_auth = ProtoField.bool("udprelay.flags.auth", "AUTH (sealed)", 8, nil, 0x01),
    flags_reserved = ProtoField.uint8("udprelay.flags.reserved", "Reserved", base.HEX, nil, 0xFE),
    key_id = ProtoField.uint32("udprelay.key_id", "Key id", base.DEC),

    sealed_session = ProtoField.uint32("udprelay.sealed.session", "Session", base.DEC),
    sealed_nonce = ProtoField.uint64("udprelay.sealed.nonce", "Nonce", base.DEC),
    sealed_ciphertext = ProtoField.bytes("udprelay.sealed.ciphertext", "Ciphertext"),
    sealed_ciphertext_len = ProtoField.uint32("udprelay.sealed.ciphertext_len", "Ciphertext length", base.DEC),
    sealed_tag = ProtoField.bytes("udprelay.sealed.tag", "Tag"),

    batch = ProtoField.uint32("udprelay.batch", "Datagram of a batch", base.DEC),

    frame = ProtoField.none("udprelay.frame", "Frame"),
    frame_type = ProtoField.uint8("udprelay.frame.type", "Type", base.HEX, type_names),
    frame_flags = ProtoField.uint8("udprelay.frame.flags", "Flags", base.HEX),
    frame_flags_more = ProtoField.bool("udprelay.frame.flags.more", "MORE", 8, nil, FLAG_MORE),
    frame_flags_origin = ProtoField.bool("udprelay.frame.flags.origin", "ORIGIN", 8, nil, FLAG_ORIGIN),
    frame_flags_reserved = ProtoField.uint8("udprelay.frame.flags.reserved", "Reserved", base.HEX, nil, 0xFC),
    frame_length = ProtoField.uint16("udprelay.frame.length", "Body length", base.DEC),

    channel_len = ProtoField.uint8("udprelay.channel_len", "Channel length", base.DEC),
    channel = ProtoField.string("udprelay.channel", "Channel"),
    payload = ProtoField.bytes("udprelay.payload", "Payload"),
    sub_id = ProtoField.uint32("udprelay.sub_id", "Subscription id", base.DEC),
    mode = ProtoField.uint8("udprelay.mode", "Mode", base.DEC, modes),
    start_kind = ProtoField.uint8("udprelay.start_kind", "Start", base.DEC, start_kinds),
    start_offset = ProtoField.uint64("udprelay.start_offset", "Start offset", base.DEC),
    since = ProtoField.uint64("udprelay.since", "Since (ns)", base.DEC),
    group_len = ProtoField.uint8("udprelay.group_len", "Group length", base.DEC),
    group = ProtoField.string("udprelay.group", "Queue group"),
    resume_count = ProtoField.uint8("udprelay.resume.count", "Resume sources", base.DEC),
    origin = ProtoField.none("udprelay.origin", "Origin"),
    origin_kind = ProtoField.uint8("udprelay.origin.kind", "Kind", base.DEC, origin_kinds),
    origin_id = ProtoField.uint64("udprelay.origin.id", "Id", base.DEC),
    origin_position = ProtoField.uint64("udprelay.origin.position", "Position", base.DEC),
    offset = ProtoField.uint64("udprelay.offset", "Offset", base.DEC),
    timestamp = ProtoField.uint64("udprelay.timestamp", "Timestamp (ns)", base.DEC),
    first_offset = ProtoField.uint64("udprelay.first_offset", "First offset", base.DEC),
    next_offset = ProtoField.uint64("udprelay.next_offset", "Next offset", base.DEC),
    lease_ms = ProtoField.uint32("udprelay.lease_ms", "Lease (ms)", base.DEC),
    channel_sub_id = ProtoField.uint32("udprelay.channel_sub_id", "Channel subscription id", base.DEC),

    ack_kind = ProtoField.uint8("udprelay.ack.kind", "Kind", base.DEC, ack_kinds),
    ack_id = ProtoField.uint64("udprelay.ack.id", "Id", base.DEC),
    ack_cumulative = ProtoField.uint64("udprelay.ack.cumulative", "Cumulative", base.DEC),
    ack_window = ProtoField.uint32("udprelay.ack.window", "Window", base.DEC),
    ack_range_count = ProtoField.uint32("udprelay.ack.range_count", "Ranges", base.DEC),
    ack_range = ProtoField.none("udprelay.ack.range", "Range"),
    ack_range_start = ProtoField.uint64("udprelay.ack.range.start", "Start", base.DEC),
    ack_range_end = ProtoField.uint64("udprelay.ack.range.end", "End", base.DEC),

    session = ProtoField.uint64("udprelay.session", "Session", base.DEC),
    seq = ProtoField.uint64("udprelay.seq", "Sequence number", base.DEC),
    acked_below = ProtoField.uint64("udprelay.acked_below", "Acknowledged below", base.DEC),

    msg_id = ProtoField.uint32("udprelay.msg_id", "Message id", base.DEC),
    fragment_index = ProtoField.uint16("udprelay.fragment.index", "Index", base.DEC),
    fragment_count = ProtoField.uint16("udprelay.fragment.count", "Count", base.DEC),
    fragment_total = ProtoField.uint32("udprelay.fragment.total", "Total length", base.DEC),
    fragment_at = ProtoField.uint32("udprelay.fragment.at", "At", base.DEC),
    chunk = ProtoField.bytes("udprelay.chunk", "Chunk"),

    token = ProtoField.bytes("udprelay.token", "Token"),
    token_issued = ProtoField.uint32("udprelay.token.issued", "Issued (s)", base.DEC),
    token_mac = ProtoField.bytes("udprelay.token.mac", "MAC"),

    handshake_key_id = ProtoField.uint32("udprelay.handshake.key_id", "Key id", base.DEC),
    handshake_expires = ProtoField.uint64("udprelay.handshake.expires", "Expires (s)", base.DEC),
    handshake_session = ProtoField.uint32("udprelay.handshake.session", "Session", base.DEC),
    handshake_message = ProtoField.bytes("udprelay.handshake.message", "Noise message"),
    handshake_ephemeral = ProtoField.bytes("udprelay.handshake.ephemeral", "Ephemeral key"),
    handshake_tag = ProtoField.bytes("udprelay.handshake.tag", "Tag"),

    nonce = ProtoField.uint64("udprelay.nonce", "Nonce", base.DEC),
    load = ProtoField.uint32("udprelay.load", "Load (thousandths)", base.DEC),

    error_code = ProtoField.uint16("udprelay.error.code", "Code", base.DEC, error_codes),
    error_reason = ProtoField.string("udprelay.error.reason", "Reason"),

    stats_cursor = ProtoField.uint32("udprelay.stats.cursor", "Cursor", base.DEC),
    stats_padding = ProtoField.uint16("udprelay.stats.padding", "Padding (bytes)", base.DEC),
    stats_next = ProtoField.uint32("udprelay.stats.next", "Next", base.DEC, { [STATS_LAST_PAGE] = "last page" }),
    stats_entry = ProtoField.none("udprelay.stats.entry", "Entry"),
    stats_name = ProtoField.string("udprelay.stats.name", "Name"),
    stats_value = ProtoField.uint64("udprelay.stats.value", "Value", base.DEC),
}
local field_list = {}
for _, field in pairs(f) do field_list[#field_list + 1] = field end
udprelay.fields = field_list

local e = {
    malformed = ProtoExpert.new("udprelay.malformed", "Malformed udprelay datagram",
        expert.group.MALFORMED, expert.severity.ERROR),
    not_udprelay = ProtoExpert.new("udprelay.not_udprelay", "Not udprelay traffic",
        expert.group.PROTOCOL, expert.severity.WARN),
    unsupported = ProtoExpert.new("udprelay.unsupported", "Not spoken by udprelay v1",
        expert.group.PROTOCOL, expert.severity.WARN),
    sealed = ProtoExpert.new("udprelay.sealed", "Sealed: the frames are encrypted",
        expert.group.SECURITY, expert.severity.NOTE),
    unexpected = ProtoExpert.new("udprelay.unexpected", "Not acted on by the relay",
        expert.group.SEQUENCE, expert.severity.NOTE),
    hello = ProtoExpert.new("udprelay.hello", "Hello: asks for an address token",
        expert.group.SEQUENCE, expert.severity.CHAT),
}
udprelay.experts = { e.malformed, e.not_udprelay, e.unsupported, e.sealed, e.unexpected, e.hello }

-- A frame that does not decode: raised inside a frame's dissection and
-- caught by the frame loop, which reports it.
local Malformed = {}
local function malformed(reason)
    error(setmetatable({ reason = reason }, Malformed), 0)
end

-- True if `s` is well-formed UTF-8 (what Rust's str::from_utf8 accepts),
-- and, with `no_control`, holds no control character (Unicode category Cc:
-- U+0000-U+001F, U+007F-U+009F), the rule of channel names. Arithmetic
-- only, so that it runs on every Lua Wireshark links.
local function valid_utf8(s, no_control)
    local i, n = 1, #s
    while i <= n do
        local c = s:byte(i)
        local cp, len
        if c < 0x80 then
            cp, len = c, 1
        elseif c >= 0xC2 and c <= 0xDF then
            cp, len = c - 0xC0, 2
        elseif c >= 0xE0 and c <= 0xEF then
            cp, len = c - 0xE0, 3
        elseif c >= 0xF0 and c <= 0xF4 then
            cp, len = c - 0xF0, 4
        else
            return false
        end
        if i + len - 1 > n then return false end
        for k = 1, len - 1 do
            local b = s:byte(i + k)
            if b < 0x80 or b > 0xBF then return false end
            cp = cp * 64 + (b - 0x80)
        end
        if len == 3 and (cp < 0x800 or (cp >= 0xD800 and cp <= 0xDFFF)) then return false end
        if len == 4 and (cp < 0x10000 or cp > 0x10FFFF) then return false end
        if no_control and (cp < 0x20 or (cp >= 0x7F and cp <= 0x9F)) then return false end
        i = i + len
    end
    return true
end

local function has_flag(flags, bit)
    return math.floor(flags / bit) % 2 == 1
end

-- " (2024-05-01 12:00:00.000000001 UTC)" for nanoseconds since the epoch
-- (a UInt64); "" for 0.
local function date_ns(ns)
    if ns == UInt64(0) then return "" end
    local secs = (ns / 1000000000):tonumber()
    local frac = (ns % 1000000000):tonumber()
    return string.format(" (%s.%09d UTC)", os.date("!%Y-%m-%d %H:%M:%S", secs), frac)
end

local function date_s(secs)
    if secs == 0 then return "" end
    return " (" .. os.date("!%Y-%m-%d %H:%M:%S", secs) .. " UTC)"
end

-- A bounds-checked cursor over one frame body, as src/wire/reader.rs:
-- every read checks the length first and fails as malformed.
local Body = {}
Body.__index = Body

local function new_body(tvb, pos, len, tree)
    return setmetatable({ tvb = tvb, pos = pos, stop = pos + len, tree = tree }, Body)
end

function Body:left()
    return self.stop - self.pos
end

function Body:take(n, what)
    if self:left() < n then
        malformed(string.format("%s: %d bytes needed, %d left in the body", what, n, self:left()))
    end
    local r = self.tvb(self.pos, n)
    self.pos = self.pos + n
    return r
end

-- Little-endian unsigned integers: a Lua number for 1, 2 and 4 bytes, a
-- UInt64 for 8. Adds `field` to `tree` (the body's, if nil).
function Body:uint(field, n, what, tree)
    local r = self:take(n, what)
    local v
    if n == 1 then
        v = r:uint()
    elseif n == 8 then
        v = r:le_uint64()
    else
        v = r:le_uint()
    end
    local item = (tree or self.tree):add_le(field, r)
    return v, item
end

function Body:u8(field, what, tree) return self:uint(field, 1, what, tree) end
function Body:u16(field, what, tree) return self:uint(field, 2, what, tree) end
function Body:u32(field, what, tree) return self:uint(field, 4, what, tree) end
function Body:u64(field, what, tree) return self:uint(field, 8, what, tree) end

-- The rest of the body as `field` (bytes), if there is any; its length.
function Body:rest(field, what, tree)
    local n = self:left()
    tree = tree or self.tree
    if n > 0 then
        local item = tree:add(field, self:take(n, what))
        item:append_text(string.format(" (%d byte%s)", n, n == 1 and "" or "s"))
    else
        tree:add(field, self.tvb(self.pos, 0)):set_text(what .. ": none")
    end
    return n
end

-- A channel name (or queue group): a 1-byte length then 1-255 bytes of
-- UTF-8 without control characters.
function Body:name(len_field, name_field, what)
    local n = self:u8(len_field, what .. " length")
    local r = self:take(n, what)
    if n == 0 then malformed(what .. " is empty") end
    local s = r:raw()
    if not valid_utf8(s, true) then
        self.tree:add(f.payload, r):set_text(what .. ": not UTF-8, or holds a control character")
        malformed("invalid " .. what .. " (not UTF-8, or a control character)")
    end
    self.tree:add(name_field, r, s)
    return s
end

function Body:finish()
    if self:left() > 0 then
        malformed(string.format("%d bytes after the last field", self:left()))
    end
end

-- An origin (17 bytes): kind (0 relay, 1 session), id, position.
function Body:origin(what)
    local r = self:take(ORIGIN_LEN, what)
    local t = self.tree:add(f.origin, r)
    local kind = r(0, 1):uint()
    t:add(f.origin_kind, r(0, 1))
    local id = r(1, 8):le_uint64()
    local position = r(9, 8):le_uint64()
    t:add_le(f.origin_id, r(1, 8))
    t:add_le(f.origin_position, r(9, 8))
    local name = origin_kinds[kind]
    if not name then
        t:append_text(": unknown kind " .. kind)
        malformed(what .. ": unknown kind " .. kind)
    end
    local text = string.format("%s %s #%s", name, tostring(id), tostring(position))
    t:append_text(": " .. text)
    return text
end

local function quote(s, max)
    if #s > max then s = s:sub(1, max) .. "..." end
    return '"' .. s .. '"'
end

-- Dissectors of the frame bodies: each reads body `b` (of a frame whose
-- flags byte is `flags`), adds its fields, and returns the frame's summary
-- after its type name.
local bodies = {}

bodies[T.PUBLISH] = function(b)
    local channel = b:name(f.channel_len, f.channel, "channel")
    local n = b:rest(f.payload, "payload")
    return string.format("%s len=%d", channel, n)
end

bodies[T.SUBSCRIBE] = function(b, flags)
    local sub_id = b:u32(f.sub_id, "sub_id")
    local mode, mode_item = b:u8(f.mode, "mode")
    if not modes[mode] then
        mode_item:append_text(" (unknown)")
        malformed("invalid delivery mode " .. mode)
    end
    local kind, kind_item = b:u8(f.start_kind, "start_kind")
    -- The code reads the offset before it looks at the kind.
    local start
    if kind == 3 then
        local since, item = b:u64(f.since, "since")
        item:append_text(date_ns(since))
        start = "resume"
    else
        local offset = b:u64(f.start_offset, "start_offset")
        start = kind == 2 and ("@" .. tostring(offset)) or start_kinds[kind]
    end
    if not start_kinds[kind] then
        kind_item:append_text(" (unknown)")
        malformed("invalid start position " .. kind)
    end
    local channel = b:name(f.channel_len, f.channel, "channel")
    local text = string.format("sub=%d %s %s from=%s", sub_id, channel, modes[mode], start)
    if kind == 3 then
        -- The resume vector, and nothing after it; a resume joins no group.
        local count, count_item = b:u8(f.resume_count, "resume count")
        if count > MAX_RESUME_SOURCES then
            count_item:append_text(" (more than " .. MAX_RESUME_SOURCES .. ")")
        end
        if b:left() < count * ORIGIN_LEN then
            malformed(string.format("resume vector: %d entries need %d bytes, %d left",
                count, count * ORIGIN_LEN, b:left()))
        end
        for k = 1, count do b:origin("resume entry " .. k) end
        if count > MAX_RESUME_SOURCES then
            malformed("resume vector of more than " .. MAX_RESUME_SOURCES .. " sources")
        end
        text = text .. " sources=" .. count
    elseif b:left() > 0 then
        text = text .. " group=" .. b:name(f.group_len, f.group, "group")
    end
    b:finish()
    if has_flag(flags, FLAG_ORIGIN) then text = text .. " ORIGIN" end
    return text
end

bodies[T.UNSUBSCRIBE] = function(b)
    local sub_id = b:u32(f.sub_id, "sub_id")
    b:finish()
    return "sub=" .. sub_id
end

bodies[T.SUBSCRIBED] = function(b)
    local sub_id = b:u32(f.sub_id, "sub_id")
    local first = b:u64(f.first_offset, "first_offset")
    local next_offset = b:u64(f.next_offset, "next_offset")
    local lease = b:u32(f.lease_ms, "lease_ms")
    b:finish()
    return string.format("sub=%d first=%s next=%s lease=%dms", sub_id, tostring(first),
        tostring(next_offset), lease)
end

bodies[T.MATCHED] = function(b)
    local sub_id = b:u32(f.sub_id, "sub_id")
    local channel_sub, item = b:u32(f.channel_sub_id, "channel_sub_id")
    if channel_sub >= RELAY_SUB_IDS then item:append_text(" (the relay's)") end
    local first = b:u64(f.first_offset, "first_offset")
    local next_offset = b:u64(f.next_offset, "next_offset")
    local channel = b:name(f.channel_len, f.channel, "channel")
    b:finish()
    return string.format("sub=%d %s as sub=%d first=%s next=%s", sub_id, channel, channel_sub,
        tostring(first), tostring(next_offset))
end

-- sub_id, offset, timestamp and, with flag ORIGIN, the origin: the start
-- of DELIVER and DELIVER_FRAGMENT.
local function delivery_head(b, flags)
    local sub_id = b:u32(f.sub_id, "sub_id")
    local offset = b:u64(f.offset, "offset")
    local ts, item = b:u64(f.timestamp, "timestamp")
    item:append_text(date_ns(ts))
    local text = string.format("sub=%d @%s", sub_id, tostring(offset))
    if has_flag(flags, FLAG_ORIGIN) then
        text = text .. " origin=" .. b:origin("origin")
    end
    return text
end

bodies[T.DELIVER] = function(b, flags)
    local text = delivery_head(b, flags)
    local n = b:rest(f.payload, "payload")
    return text .. " len=" .. n
end

bodies[T.DELIVER_FRAGMENT] = function(b, flags)
    local text = delivery_head(b, flags)
    local total = b:u32(f.fragment_total, "total")
    local at = b:u32(f.fragment_at, "at")
    local n = b:left()
    if n == 0 then malformed("empty chunk") end
    b:rest(f.chunk, "chunk")
    if at + n > total then
        malformed(string.format("chunk at %d of %d bytes runs past the total %d", at, n, total))
    end
    return string.format("%s at=%d+%d/%d", text, at, n, total)
end

bodies[T.ACK] = function(b)
    local kind, kind_item = b:u8(f.ack_kind, "kind")
    if not ack_kinds[kind] then
        kind_item:append_text(" (unknown)")
        malformed("invalid ack kind " .. kind)
    end
    local id = b:u64(f.ack_id, "id")
    local cumulative = b:u64(f.ack_cumulative, "cumulative")
    local window = b:u32(f.ack_window, "window")
    local rest = b:left()
    if rest % 16 ~= 0 then
        malformed(string.format("ranges: %d bytes, not whole 16-byte pairs", rest))
    end
    local count = rest / 16
    b.tree:add(f.ack_range_count, count):set_generated()
    for _ = 1, count do
        local r = b:take(16, "range")
        local start, stop = r(0, 8):le_uint64(), r(8, 8):le_uint64()
        local t = b.tree:add(f.ack_range, r)
        t:add_le(f.ack_range_start, r(0, 8))
        t:add_le(f.ack_range_end, r(8, 8))
        t:append_text(string.format(": [%s, %s)", tostring(start), tostring(stop)))
    end
    local text = string.format("%s id=%s cum=%s win=%d", ack_kinds[kind], tostring(id),
        tostring(cumulative), window)
    if count > 0 then text = text .. " ranges=" .. count end
    return text
end

bodies[T.RELIABLE_PUBLISH] = function(b, flags)
    local session = b:u64(f.session, "session")
    local seq = b:u64(f.seq, "seq")
    local acked_below = b:u64(f.acked_below, "acked_below")
    local channel = b:name(f.channel_len, f.channel, "channel")
    local n = b:rest(f.payload, "payload")
    local text = string.format("session=%s seq=%s acked<%s %s len=%d", tostring(session),
        tostring(seq), tostring(acked_below), channel, n)
    if has_flag(flags, FLAG_MORE) then text = text .. " MORE" end
    return text
end

bodies[T.FRAGMENT] = function(b)
    local msg_id = b:u32(f.msg_id, "msg_id")
    local index = b:u16(f.fragment_index, "index")
    local count = b:u16(f.fragment_count, "count")
    if count < 2 or index >= count then
        malformed(string.format("piece %d of %d (count at least 2, index below it)", index, count))
    end
    local channel = b:name(f.channel_len, f.channel, "channel")
    local n = b:left()
    if n == 0 then malformed("empty chunk") end
    b:rest(f.chunk, "chunk")
    return string.format("msg=%d %d/%d %s len=%d", msg_id, index, count, channel, n)
end

local function token_body(b, code)
    if b:left() ~= TOKEN_LEN then
        malformed(string.format("token of %d bytes, not %d", b:left(), TOKEN_LEN))
    end
    local r = b:take(TOKEN_LEN, "token")
    local t = b.tree:add(f.token, r)
    if r:bytes():tohex() == string.rep("00", TOKEN_LEN) then
        if code == T.VALIDATE then
            t:add_proto_expert_info(e.hello, "Hello: 20 zero bytes, asking for an address token")
        end
        return "hello"
    end
    -- Opaque to clients; this is how this relay makes them.
    local issued = r(0, 4):le_uint()
    t:add_le(f.token_issued, r(0, 4)):append_text(date_s(issued))
    t:add(f.token_mac, r(4, 16))
    return ""
end

bodies[T.ADDRESS_TOKEN] = function(b) return token_body(b, T.ADDRESS_TOKEN) end
bodies[T.VALIDATE] = function(b) return token_body(b, T.VALIDATE) end

local function noise_message(b)
    if b:left() ~= NOISE_MESSAGE_LEN then
        malformed(string.format("Noise message of %d bytes, not %d", b:left(), NOISE_MESSAGE_LEN))
    end
    local r = b:take(NOISE_MESSAGE_LEN, "Noise message")
    local t = b.tree:add(f.handshake_message, r)
    t:add(f.handshake_ephemeral, r(0, 32))
    t:add(f.handshake_tag, r(32, 16))
end

bodies[T.HANDSHAKE] = function(b)
    local key_id = b:u32(f.handshake_key_id, "key_id")
    local expires, item = b:u64(f.handshake_expires, "expires")
    if expires ~= UInt64(0) then item:append_text(date_s(expires:tonumber())) end
    noise_message(b)
    return string.format("key=%d expires=%s", key_id, tostring(expires))
end

bodies[T.HANDSHAKE_REPLY] = function(b)
    local session = b:u32(f.handshake_session, "session")
    noise_message(b)
    return "session=" .. session
end

local function ping_body(b, code)
    local nonce = b:u64(f.nonce, "nonce")
    local text = "nonce=" .. tostring(nonce)
    local n = b:left()
    if n == 4 then
        local load, item = b:u32(f.load, "load")
        if code == T.PING then
            item:append_text(" (asks for the relay's load)")
            text = text .. " load?"
        else
            text = text .. " load=" .. load
        end
    elseif n ~= 0 then
        malformed(string.format("%d bytes after the nonce (0 or 4 may follow)", n))
    end
    return text
end

bodies[T.PING] = function(b) return ping_body(b, T.PING) end
bodies[T.PONG] = function(b) return ping_body(b, T.PONG) end

bodies[T.ERROR] = function(b)
    local code = b:u16(f.error_code, "code")
    local name = error_codes[code] or ("code " .. code)
    local reason = ""
    local n = b:left()
    if n > 0 then
        local r = b:take(n, "reason")
        reason = r:raw()
        if not valid_utf8(reason, false) then
            b.tree:add(f.payload, r):set_text("Reason: not UTF-8")
            malformed("error reason is not UTF-8")
        end
        b.tree:add(f.error_reason, r, reason)
    end
    return name .. " " .. quote(reason, 60)
end

bodies[T.STATS_REQUEST] = function(b)
    -- An empty body is the unpaged request of earlier builds: cursor 0
    -- and no room for any answer.
    if b:left() == 0 then
        b.tree:add_proto_expert_info(e.unexpected,
            "Empty STATS_REQUEST: no room for an answer, so the relay sends none")
        return "cursor=0 (empty: no answer)"
    end
    local cursor = b:u32(f.stats_cursor, "cursor")
    local padding = b:left()
    if padding > 0 then
        b.tree:add(f.stats_padding, b:take(padding, "padding"), padding)
    else
        b.tree:add(f.stats_padding, padding):set_generated()
    end
    return string.format("cursor=%d room=%d", cursor, padding)
end

bodies[T.STATS] = function(b)
    local cursor = b:u32(f.stats_cursor, "cursor")
    local next_page = b:u32(f.stats_next, "next")
    local count = 0
    while b:left() > 0 do
        local start = b.pos
        local n = b.tvb(start, 1):uint()
        if b:left() < 1 + n + 8 then
            malformed(string.format("stats entry %d: %d bytes needed, %d left", count + 1,
                1 + n + 8, b:left()))
        end
        local r = b:take(1 + n + 8, "stats entry")
        local name = n > 0 and r(1, n):raw() or ""
        if not valid_utf8(name, false) then
            b.tree:add(f.payload, r):set_text("Stats entry: name not UTF-8")
            malformed("stats name is not UTF-8")
        end
        local value = r(1 + n, 8):le_uint64()
        local t = b.tree:add(f.stats_entry, r)
        t:set_text(string.format("%s = %s", name, tostring(value)))
        t:add(f.stats_name, n > 0 and r(1, n) or r(0, 1), name)
        t:add_le(f.stats_value, r(1 + n, 8))
        count = count + 1
    end
    local next_text = next_page == STATS_LAST_PAGE and "last" or tostring(next_page)
    return string.format("cursor=%d next=%s entries=%d", cursor, next_text, count)
end

-- Adds the header flags byte (at offset 3) to `tree`.
local function header_flags(tree, tvb)
    local t = tree:add(f.flags, tvb(3, 1))
    t:add(f.flags_auth, tvb(3, 1))
    t:add(f.flags_reserved, tvb(3, 1))
end

-- The bytes from `pos` on, shown as not read, if there are any.
local function not_read(tree, tvb, pos, why)
    if tvb:len() > pos then
        tree:add(f.payload, tvb(pos)):set_text(string.format("Not read (%d bytes): %s",
            tvb:len() - pos, why))
    end
end

-- One frame at `pos`: adds its subtree, returns its summary, the position
-- after it and false; or, if it does not decode, a summary saying so, nil
-- and the reason.
local function dissect_frame(tvb, tree, pos, index)
    local left = tvb:len() - pos
    local ft = tree:add(f.frame, tvb(pos))
    if left < FRAME_HEADER_LEN then
        ft:set_text(string.format("Frame %d: truncated header (%d bytes)", index, left))
        return "truncated frame", nil, string.format("frame header truncated: %d of 4 bytes", left)
    end
    local code = tvb(pos, 1):uint()
    local flags = tvb(pos + 1, 1):uint()
    local len = tvb(pos + 2, 2):le_uint()
    local name = type_names[code] or string.format("type 0x%02x", code)
    ft:add(f.frame_type, tvb(pos, 1))
    local flags_item = ft:add(f.frame_flags, tvb(pos + 1, 1))
    flags_item:add(f.frame_flags_more, tvb(pos + 1, 1))
    flags_item:add(f.frame_flags_origin, tvb(pos + 1, 1))
    flags_item:add(f.frame_flags_reserved, tvb(pos + 1, 1))
    ft:add_le(f.frame_length, tvb(pos + 2, 2))
    local function fail(reason)
        ft:set_text(string.format("Frame %d: %s (malformed)", index, name))
        return name .. " (malformed)", nil, reason
    end
    if not type_names[code] then
        return fail(string.format("unknown frame type 0x%02x", code))
    end
    local allowed = allowed_flags[code] or 0
    local undefined = flags
    if allowed ~= 0 and has_flag(flags, allowed) then undefined = flags - allowed end
    if undefined ~= 0 then
        return fail(string.format("%s has undefined flags 0x%02x", name, flags))
    end
    if left - FRAME_HEADER_LEN < len then
        ft:set_len(left)
        return fail(string.format("body of %d bytes runs past the datagram (%d left)", len,
            left - FRAME_HEADER_LEN))
    end
    ft:set_len(FRAME_HEADER_LEN + len)
    local b = new_body(tvb, pos + FRAME_HEADER_LEN, len, ft)
    local ok, result = pcall(bodies[code], b, flags, code)
    if not ok then
        if getmetatable(result) == Malformed then
            return fail(name .. ": " .. result.reason)
        end
        return fail(name .. ": dissector error: " .. tostring(result))
    end
    local summary = result ~= "" and (name .. " " .. result) or name
    ft:set_text(string.format("Frame %d: %s", index, summary))
    return summary, pos + FRAME_HEADER_LEN + len, nil, code, ft
end

-- The length of the sealed datagram at the start of `tvb`: all of it, or,
-- in a batch (see dissect), up to the next sealed datagram of the same
-- session whose nonce is one more.
local function sealed_length(tvb)
    local len = tvb:len()
    local s = tvb:raw()
    local next_header = "UR\1\1" .. s:sub(5, 8)
    local nonce = tvb(8, 8):le_uint64()
    local from = SEALED_HEADER_LEN + TAG_LEN + 1
    while true do
        local at = s:find(next_header, from, true)
        if not at or at - 1 + SEALED_HEADER_LEN + TAG_LEN > len then return len end
        if tvb(at - 1 + 8, 8):le_uint64() == nonce + 1 then return at - 1 end
        from = at + 1
    end
end

-- A sealed datagram at the start of `tvb`: its header after the flags,
-- and what can be seen of the rest. Returns its summary and length.
local function dissect_sealed(tvb, tree)
    local len = tvb:len()
    tree:add_le(f.sealed_session, tvb(4, 4))
    if len < SEALED_HEADER_LEN + TAG_LEN then
        tree:add_proto_expert_info(e.malformed, string.format(
            "Sealed datagram of %d bytes: shorter than 32 (header, nonce, tag)", len))
        not_read(tree, tvb, HEADER_LEN, "too short to be sealed")
        return "SEALED (malformed: shorter than 32 bytes)", len
    end
    len = sealed_length(tvb)
    local session = tvb(4, 4):le_uint()
    local nonce = tvb(8, 8):le_uint64()
    tree:add_le(f.sealed_nonce, tvb(8, 8))
    local n = len - SEALED_HEADER_LEN - TAG_LEN
    if n > 0 then
        tree:add(f.sealed_ciphertext, tvb(SEALED_HEADER_LEN, n))
    end
    tree:add(f.sealed_ciphertext_len, n):set_generated()
    tree:add(f.sealed_tag, tvb(len - TAG_LEN, TAG_LEN))
    tree:add_proto_expert_info(e.sealed, string.format(
        "Sealed: %d bytes of frames, encrypted (AES-256-GCM under the session's keys); they cannot be read here", n))
    return string.format("SEALED session=%d nonce=%s len=%d", session, tostring(nonce), n), len
end

-- The udprelay datagram at the start of `tvb`: adds its tree under
-- `tree`; returns its Info summary, its length and its tree.
local function dissect_datagram(tvb, tree)
    local len = tvb:len()
    local root = tree:add(udprelay, tvb())
    if len < 2 or tvb(0, 2):raw() ~= "UR" then
        root:add_proto_expert_info(e.not_udprelay, "Not udprelay traffic: no \"UR\" magic")
        not_read(root, tvb, 0, "no udprelay magic")
        return "Not udprelay (no magic)", len, root
    end
    root:add(f.magic, tvb(0, 2))
    if len < HEADER_LEN then
        if len > 2 then root:add(f.version, tvb(2, 1)) end
        root:add_proto_expert_info(e.malformed, string.format(
            "Datagram of %d bytes: shorter than the 8-byte header", len))
        return "Malformed: shorter than the header", len, root
    end
    local version = tvb(2, 1):uint()
    local flags = tvb(3, 1):uint()
    local key_id = tvb(4, 4):le_uint()
    local version_item = root:add(f.version, tvb(2, 1))
    header_flags(root, tvb)
    if version ~= 1 then
        root:add_le(f.key_id, tvb(4, 4))
        version_item:add_proto_expert_info(e.unsupported, string.format(
            "Version %d: the relay answers ERROR unsupported-version", version))
        not_read(root, tvb, HEADER_LEN, "another version")
        return string.format("Version %d (not spoken)", version), len, root
    end
    if flags == FLAG_AUTH then
        local info, used = dissect_sealed(tvb, root)
        root:set_len(used)
        root:append_text(", " .. info)
        return info, used, root
    end
    root:add_le(f.key_id, tvb(4, 4))
    if flags ~= 0 or key_id ~= 0 then
        root:add_proto_expert_info(e.unsupported, string.format(
            "Header flags 0x%02x, key id %d: the relay answers ERROR unsupported", flags, key_id))
        not_read(root, tvb, HEADER_LEN, "header flags or key id v1 does not have")
        return string.format("Unsupported header flags 0x%02x key id %d", flags, key_id), len, root
    end
    local summaries = {}
    local pos, index = HEADER_LEN, 1
    while pos < len do
        -- 0x55 is no frame type: "UR" and version 1 where a frame would
        -- start is the next datagram of a batch.
        if len - pos >= 3 and tvb(pos, 3):raw() == "UR\1" then break end
        local summary, after, reason, code, ft = dissect_frame(tvb, root, pos, index)
        summaries[#summaries + 1] = summary
        if not after then
            root:add_proto_expert_info(e.malformed, string.format("Frame %d: %s", index, reason))
            pos = len
            break
        end
        if code == T.VALIDATE and index > 1 then
            ft:add_proto_expert_info(e.unexpected, "VALIDATE is not the datagram's first frame: the relay ignores it")
        end
        if code == T.HANDSHAKE and after < len then
            ft:add_proto_expert_info(e.unexpected, "A handshake ends its datagram: the relay reads no frame after it")
        end
        pos, index = after, index + 1
    end
    root:set_len(pos)
    root:append_text(string.format(", %d frame%s", #summaries, #summaries == 1 and "" or "s"))
    if #summaries == 0 then summaries[1] = "no frames" end
    return table.concat(summaries, ", "), pos, root
end

-- Every datagram in `tvb`. A capture holds several back to back where the
-- sender used UDP GSO (as the relay does; seen on the sending host, and
-- on loopback) or the receiver GRO: one tree for each, and the Info column
-- joins their summaries with " | ".
local function dissect(tvb, pinfo, tree)
    pinfo.cols.protocol:set("udprelay")
    local len = tvb:len()
    local infos, roots = {}, {}
    local pos = 0
    repeat
        local info, used, root = dissect_datagram(pos == 0 and tvb or tvb(pos):tvb(), tree)
        infos[#infos + 1] = info
        roots[#roots + 1] = root
        pos = pos + used
    until pos >= len or used == 0
    if #roots > 1 then
        for k, root in ipairs(roots) do
            root:add(f.batch, k):set_generated()
            root:append_text(string.format(" (datagram %d of %d in one capture record)", k, #roots))
        end
    end
    pinfo.cols.info:set(table.concat(infos, " | "))
    return len
end

-- Never raises: anything unforeseen becomes a malformed expert info.
function udprelay.dissector(tvb, pinfo, tree)
    local ok, result = pcall(dissect, tvb, pinfo, tree)
    if ok then return result end
    tree:add_proto_expert_info(e.malformed, "udprelay dissector error: " .. tostring(result))
    return tvb:len()
end

-- "UR" and version 1: claimed on any UDP port.
local function heuristic(tvb, pinfo, tree)
    if tvb:len() < 3 or tvb(0, 3):raw() ~= "UR\1" then
        return false
    end
    udprelay.dissector(tvb, pinfo, tree)
    return true
end

udprelay:register_heuristic("udp", heuristic)
DissectorTable.get("udp.port"):add_for_decode_as(udprelay)
