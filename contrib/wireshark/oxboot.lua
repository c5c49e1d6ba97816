-- oxboot.lua: a Wireshark/tshark dissector for the Oxide network boot
-- protocol (Ethernet II, ethertype 0x1DE0), the one `bootserver` and the
-- operating system's boot client speak. Frame layout and the OS client's
-- habits: docs/protocol.md in the oxboot repository.
--
-- It decodes the six frame types (HELLO, OFFER, READ, DATA, FINISHED,
-- RESET) into fields named oxboot.* (filter on them: `oxboot.type == 0x9106`
-- shows the RESETs, `oxboot.offset == 0x1fc00` one chunk's READs and DATA)
-- and flags, as expert info, the frames a peer would drop as malformed and
-- the well-formed ones that hurt the OS client: a READ whose noffsets
-- disagrees with its slots, a DATA of 1 to 25 bytes (padded to 60 bytes on
-- the wire, which makes the OS client panic).
--
-- Install (a Wireshark built with Lua, as Debian's is; tested with 4.0):
--   mkdir -p ~/.local/lib/wireshark/plugins
--   cp oxboot.lua ~/.local/lib/wireshark/plugins/
-- or, for one run:
--   tshark -X lua_script:oxboot.lua -r boot.pcap
-- Capture a boot (as root, on the server's link or the sled's):
--   tcpdump -i eth1 -w boot.pcap ether proto 0x1de0
--   (or: dumpcap -i eth1 -f 'ether proto 0x1de0' -w boot.pcap)
-- Wireshark and tshark refuse Lua plugins when run as root: read the
-- capture as an ordinary user.
--
-- A frame of any shape must never make this script fail: every read below
-- is checked against the captured bytes first, and whatever does not fit is
-- marked malformed instead.

-- The protocol's constants: docs/protocol.md's values, repeated here because
-- a plugin file stands alone; tests/test_dissector.py checks them against
-- oxboot/protocol.py.
local ETHERTYPE = 0x1DE0
local MAGIC = 0x1DE12345
local HDR_LEN = 12           -- magic, type, len: big-endian u32 each
local SLOTS = 128
local READ_LEN = 1032        -- u64 noffsets + 128 u64 slots
local OFFER_LEN = 176        -- ramdisk_size, data_size, sha256, dataset
local DATASET_LEN = 128
local MAX_DATA = 1468        -- the OS client drops a longer DATA payload
local MAX_HELLO = 1500
local MIN_DATA_PAYLOAD = 26  -- 1..25 bytes: a frame under Ethernet's 60
local MIN_OFFER_SIZE = 1048576

local T_HELLO, T_OFFER, T_READ = 0x9001, 0x9102, 0x9003
local T_DATA, T_FINISHED, T_RESET = 0x9104, 0x9005, 0x9106
local TYPE_NAMES = {
    [T_HELLO] = "HELLO", [T_OFFER] = "OFFER", [T_READ] = "READ",
    [T_DATA] = "DATA", [T_FINISHED] = "FINISHED", [T_RESET] = "RESET",
}

local oxboot = Proto("oxboot", "Oxide network boot protocol")

local f = {
    magic = ProtoField.uint32("oxboot.magic", "Magic", base.HEX),
    type = ProtoField.uint32("oxboot.type", "Type", base.HEX, TYPE_NAMES),
    len = ProtoField.uint32("oxboot.len", "Length", base.DEC),
    hello_text = ProtoField.string("oxboot.hello_text", "Text"),
    ramdisk_size = ProtoField.uint64("oxboot.ramdisk_size", "Ramdisk size", base.DEC),
    data_size = ProtoField.uint64("oxboot.data_size", "Image size", base.DEC),
    sha256 = ProtoField.bytes("oxboot.sha256", "SHA-256"),
    dataset = ProtoField.string("oxboot.dataset", "Dataset"),
    noffsets = ProtoField.uint64("oxboot.noffsets", "Offsets due", base.DEC),
    offsets = ProtoField.uint64("oxboot.offsets", "Slot offset", base.HEX),
    offset = ProtoField.uint64("oxboot.offset", "Offset", base.HEX),
    data_len = ProtoField.uint32("oxboot.data_len", "Data length", base.DEC),
    data = ProtoField.bytes("oxboot.data", "Data"),
    payload = ProtoField.bytes("oxboot.payload", "Payload"),
}
oxboot.fields = {
    f.magic, f.type, f.len, f.hello_text, f.ramdisk_size, f.data_size, f.sha256,
    f.dataset, f.noffsets, f.offsets, f.offset, f.data_len, f.data, f.payload,
}

-- Malformed (group PI_MALFORMED): what oxboot's parser rejects, so what a
-- boot server or the OS client drops. The rest are well-formed frames that
-- break a boot.
local e = {
    short = ProtoExpert.new("oxboot.expert.short", "Frame too short for the header",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_magic = ProtoExpert.new("oxboot.expert.bad_magic", "Wrong magic",
        expert.group.MALFORMED, expert.severity.ERROR),
    unknown_type = ProtoExpert.new("oxboot.expert.unknown_type", "Unknown type",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_len = ProtoExpert.new("oxboot.expert.bad_len", "len disagrees with the frame",
        expert.group.MALFORMED, expert.severity.ERROR),
    noffsets_range = ProtoExpert.new("oxboot.expert.noffsets_range", "READ noffsets above 128",
        expert.group.MALFORMED, expert.severity.ERROR),
    noffsets_slots = ProtoExpert.new("oxboot.expert.noffsets_slots",
        "READ noffsets disagrees with its nonzero slots",
        expert.group.PROTOCOL, expert.severity.WARN),
    runt_data = ProtoExpert.new("oxboot.expert.runt_data",
        "DATA of 1..25 bytes: padded to 60 on the wire, the OS client panics",
        expert.group.PROTOCOL, expert.severity.ERROR),
    data_trailer = ProtoExpert.new("oxboot.expert.data_trailer",
        "Bytes after a DATA payload: the OS client panics",
        expert.group.PROTOCOL, expert.severity.WARN),
    offer_refused = ProtoExpert.new("oxboot.expert.offer_refused",
        "OFFER the OS client ignores",
        expert.group.PROTOCOL, expert.severity.WARN),
    internal = ProtoExpert.new("oxboot.expert.internal", "Dissector error",
        expert.group.MALFORMED, expert.severity.ERROR),
}
oxboot.experts = {
    e.short, e.bad_magic, e.unknown_type, e.bad_len, e.noffsets_range,
    e.noffsets_slots, e.runt_data, e.data_trailer, e.offer_refused, e.internal,
}

local ZERO64 = UInt64(0)

-- 0x-prefixed hex without leading zeros, as docs/protocol.md writes offsets.
local function hex64(u)
    local h = u:tohex():gsub("^0+", "")
    return "0x" .. (h == "" and "0" or h)
end

-- Text for the info column: printable ASCII only, at most `max` characters.
local function printable(raw, max)
    local s = raw:sub(1, max):gsub("[^\32-\126]", ".")
    if #raw > max then s = s .. "..." end
    return s
end

-- Each handler decodes one type's payload, which starts at `at`, is `len`
-- bytes long on the wire and of which `have` bytes were captured (fewer
-- when a capture's snapshot length cut the frame, as `tcpdump -s 64` does
-- to keep image bytes out of a file): fields not captured are left out.
-- It returns the info column's text after the type name.

local function hello(tvb, tree, at, len, have)
    if len == 0 then return '""' end
    if have == 0 then return nil end
    local r = tvb:range(at, have)
    tree:add(f.hello_text, r)
    local text = printable(r:raw(), 60)
    if have < len and have <= 60 then text = text .. "..." end
    return '"' .. text .. '"'
end

local function offer(tvb, tree, at, have, item)
    if have < 16 then return nil end
    local ramdisk = tvb:range(at, 8):uint64()
    local size = tvb:range(at + 8, 8):uint64()
    tree:add(f.ramdisk_size, tvb:range(at, 8))
    tree:add(f.data_size, tvb:range(at + 8, 8))
    if have < OFFER_LEN then
        return string.format("size %s ramdisk %s", tostring(size), tostring(ramdisk))
    end
    local sum = tvb:range(at + 16, 32)
    local dataset = tvb:range(at + 48, DATASET_LEN)
    tree:add(f.sha256, sum)
    -- The name ends at its first NUL; the rest of the field is padding.
    local raw = dataset:raw()
    local nul = raw:find("\0", 1, true)
    local name = nul and raw:sub(1, nul - 1) or raw
    tree:add(f.dataset, dataset, printable(name, DATASET_LEN))
    -- The OS client's acceptance rule, but for the checksum it compares.
    local why
    if raw:byte(DATASET_LEN) ~= 0 then
        why = "dataset byte 127 is not NUL"
    elseif ramdisk < UInt64(MIN_OFFER_SIZE) or size < UInt64(MIN_OFFER_SIZE) then
        why = "a size under 1 MiB"
    elseif size > ramdisk then
        why = "image size above ramdisk size"
    end
    if why then item:add_proto_expert_info(e.offer_refused, "OFFER the OS client ignores: " .. why) end
    return string.format("size %s ramdisk %s sha256 %s", tostring(size), tostring(ramdisk),
        tostring(sum:bytes()):lower())
end

local function read(tvb, tree, at, have, item)
    if have < 8 then return nil end
    local nr = tvb:range(at, 8)
    local noffsets = nr:uint64()
    local n_item = tree:add(f.noffsets, nr)
    local captured_slots = math.min(SLOTS, math.floor((have - 8) / 8))
    local slots, nonzero = {}, 0
    for i = 0, captured_slots - 1 do
        local v = tvb:range(at + 8 + 8 * i, 8):uint64()
        slots[i] = v
        if v ~= ZERO64 then nonzero = nonzero + 1 end
    end
    -- Offset 0 is both a real offset (slot 0 of the first batch) and the
    -- "not due" marker: it is due exactly when fewer slots are nonzero than
    -- noffsets says (oxboot.protocol.due_offsets, the OS client's rule).
    local zero_due = UInt64(nonzero) < noffsets
    if noffsets > UInt64(SLOTS) then
        n_item:add_proto_expert_info(e.noffsets_range,
            string.format("READ noffsets %s above %d", tostring(noffsets), SLOTS))
    elseif captured_slots == SLOTS
            and not (noffsets == UInt64(nonzero)
                     or (noffsets == UInt64(nonzero + 1) and slots[0] == ZERO64)) then
        n_item:add_proto_expert_info(e.noffsets_slots, string.format(
            "READ noffsets %s disagrees with its %d nonzero slots", tostring(noffsets), nonzero))
    end
    local lo, hi
    for i = 0, captured_slots - 1 do
        local v = slots[i]
        local due = v ~= ZERO64 or (i == 0 and zero_due)
        local slot = tree:add(f.offsets, tvb:range(at + 8 + 8 * i, 8))
        slot:set_text(string.format("Slot %d: %s%s", i, hex64(v), due and "" or " (not due)"))
        if due then
            if lo == nil or v < lo then lo = v end
            if hi == nil or v > hi then hi = v end
        end
    end
    local count = tostring(noffsets)
    local text = count .. (count == "1" and " offset" or " offsets")
    if lo == nil then return text end
    if lo == hi then return text .. " " .. hex64(lo) end
    return text .. " " .. hex64(lo) .. ".." .. hex64(hi)
end

local function data(tvb, tree, at, len, have, frame_len, item)
    if have < 8 then return nil end
    local off = tvb:range(at, 8):uint64()
    tree:add(f.offset, tvb:range(at, 8))
    local n = len - 8
    tree:add(f.data_len, n):set_generated()
    if have > 8 then tree:add(f.data, tvb:range(at + 8, have - 8)) end
    if n > 0 and n < MIN_DATA_PAYLOAD then
        item:add_proto_expert_info(e.runt_data, string.format(
            "DATA of %d bytes: padded to 60 on the wire, the OS client panics (pad to %d)",
            n, MIN_DATA_PAYLOAD))
    elseif n > 0 and frame_len > at + len then
        -- The OS client compares len with the bytes the frame really holds.
        item:add_proto_expert_info(e.data_trailer, string.format(
            "%d bytes after the DATA payload: the OS client panics", frame_len - at - len))
    end
    return string.format("offset %s len %d%s", hex64(off), n, n == 0 and " (end of image)" or "")
end

-- The payload length each type must have, or nil for a range checked apart.
local FIXED_LEN = { [T_OFFER] = OFFER_LEN, [T_READ] = READ_LEN, [T_FINISHED] = 0, [T_RESET] = 0 }

local function dissect(tvb, pinfo, root)
    pinfo.cols.protocol = "OXBOOT"
    local captured = tvb:len()
    local frame_len = tvb:reported_len()
    local item = root:add(oxboot, tvb())
    if captured < HDR_LEN and frame_len >= HDR_LEN then
        pinfo.cols.info = "[cut short by the capture]"
        return math.max(captured, 1)
    end
    if captured < HDR_LEN then
        item:add_proto_expert_info(e.short, string.format(
            "Frame too short for the header: %d of %d bytes", captured, HDR_LEN))
        pinfo.cols.info = string.format("malformed: %d header bytes of %d", captured, HDR_LEN)
        -- Returning 0 would mean "not this protocol": claim an empty frame too.
        return math.max(captured, 1)
    end
    local magic = tvb:range(0, 4):uint()
    local code = tvb:range(4, 4):uint()
    local len = tvb:range(8, 4):uint()
    local m_item = item:add(f.magic, tvb:range(0, 4))
    local t_item = item:add(f.type, tvb:range(4, 4))
    local l_item = item:add(f.len, tvb:range(8, 4))
    local name = TYPE_NAMES[code] or string.format("type 0x%x", code)
    if magic ~= MAGIC then
        item:append_text(", wrong magic")
        m_item:add_proto_expert_info(e.bad_magic, string.format(
            "Wrong magic 0x%08x (expected 0x%08x): not a frame of this protocol", magic, MAGIC))
        pinfo.cols.info = string.format("bad magic 0x%08x", magic)
        if captured > HDR_LEN then item:add(f.payload, tvb:range(HDR_LEN)) end
        return captured
    end
    item:append_text(", " .. name)
    if TYPE_NAMES[code] == nil then
        t_item:add_proto_expert_info(e.unknown_type, string.format("Unknown type 0x%x", code))
        pinfo.cols.info = string.format("unknown type 0x%x", code)
        if captured > HDR_LEN then item:add(f.payload, tvb:range(HDR_LEN)) end
        return captured
    end
    local want = FIXED_LEN[code]
    local problem
    if want ~= nil and len ~= want then
        problem = string.format("%s len %d, must be %d", name, len, want)
    elseif code == T_DATA and (len < 8 or len > 8 + MAX_DATA) then
        problem = string.format("DATA len %d outside 8..%d", len, 8 + MAX_DATA)
    elseif code == T_HELLO and len > MAX_HELLO then
        problem = string.format("HELLO len %d above %d", len, MAX_HELLO)
    elseif len > frame_len - HDR_LEN then
        problem = string.format("len %d runs past the frame's end (%d payload bytes)",
            len, frame_len - HDR_LEN)
    end
    if problem then
        l_item:add_proto_expert_info(e.bad_len, problem)
        pinfo.cols.info = name .. " malformed: " .. problem
        if captured > HDR_LEN then item:add(f.payload, tvb:range(HDR_LEN)) end
        return captured
    end
    item:set_len(HDR_LEN + len)
    local have = math.min(len, captured - HDR_LEN)
    local text
    if code == T_HELLO then
        text = hello(tvb, item, HDR_LEN, len, have)
    elseif code == T_OFFER then
        text = offer(tvb, item, HDR_LEN, have, item)
    elseif code == T_READ then
        text = read(tvb, item, HDR_LEN, have, item)
    elseif code == T_DATA then
        text = data(tvb, item, HDR_LEN, len, have, frame_len, item)
    end
    if have < len then
        -- Whole on the wire, cut by the capture's snapshot length.
        text = (text and text .. " " or "") .. "[cut short by the capture]"
    end
    pinfo.cols.info = text and (name .. " " .. text) or name
    return math.min(HDR_LEN + len, captured)
end

function oxboot.dissector(tvb, pinfo, root)
    -- The checks above keep every read inside the captured bytes; should one
    -- still fail, the frame is marked instead of a Lua error being shown.
    local ok, result = pcall(dissect, tvb, pinfo, root)
    if ok then return result end
    root:add_proto_expert_info(e.internal, "Dissector error: " .. tostring(result))
    return math.max(tvb:len(), 1)
end

DissectorTable.get("ethertype"):add(ETHERTYPE, oxboot)
