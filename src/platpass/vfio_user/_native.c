// SPDX-License-Identifier: Apache-2.0
/*
 * platpass.vfio_user._native: the trapped-register round trip of vfio-user, in C.
 *
 * A guest's access to a trapped register is one vfio-user REGION_READ or REGION_WRITE
 * of 1, 2, 4 or 8 bytes, and the server's whole job for it is: receive the 32 (+ value)
 * bytes, check them, call the device, send 36 (or 32) bytes back.  Written in Python
 * that job costs more CPU than the socket itself; here it is one C loop that calls the
 * device (still Python: the drivers' traps and the simulated models live there) and
 * nothing else.
 *
 * Nothing here decides anything: a message is answered here only when it is exactly the
 * single access that platpass.vfio_user.protocol.region_access would answer, on a region
 * the session says is readable (or writable), and the device itself checks the access
 * (raising VfioError when it refuses, which hands the message to the full codec).  Every
 * other case - fds, truncation, end of file, a partial or unusual message, a refused or
 * failed access, a reply the socket will not take at once - stops the loop and goes
 * back to Python with where it stopped, so the errno replies, logs and back-pressure
 * rules stay in one place.
 *
 * The client half (Caller) is the mirror image: pack one access, send it, wait for the
 * reply with the GIL let go, check that it is that access's successful reply.
 *
 * The byte layouts are the ones of region_access.ACCESS ("=HHIIIQII"): a 16-byte header
 * (msg_id, command, size, flags, error) then offset (u64), region (u32), count (u32),
 * all in the host's byte order, then the value, little-endian.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "platpass.vfio_user._native assumes a little-endian host (the value travels little-endian)"
#endif

/* Bumped whenever the Python side's expectations change; Python checks it. */
#define ABI_VERSION 2

#define HEADER_SIZE 16
#define ACCESS_SIZE 32
#define CMD_REGION_READ 9
#define CMD_REGION_WRITE 10
#define TYPE_REPLY 1
#define FLAG_NO_REPLY (1u << 4)
#define FLAG_ERROR (1u << 5)

/* What serve() / answer() report (the first item of a tuple, or the int itself). */
enum {
	DONE = 0,	/* the whole chunk was answered (an int, no tuple) */
	AGAIN = 1,	/* nothing to read now (non-blocking) */
	SLOW = 2,	/* (SLOW, at, nbytes, ancdata, flags): buf[at:nbytes] to the codec */
	FAILED = 3,	/* (FAILED, at, nbytes, exception, posted): the backend raised */
	UNSENT = 4,	/* (UNSENT, at, nbytes, length, sent): reply not (fully) sent */
	RECV_FAILED = 5,	/* (RECV_FAILED, errno) */
	CLOSED = 6,	/* (CLOSED, 0, nbytes, ancdata, flags): closed while receiving */
};

struct access {
	uint16_t msg_id;
	uint16_t command;
	uint32_t size;
	uint32_t flags;
	uint32_t error;
	uint64_t offset;
	uint32_t region;
	uint32_t count;
} __attribute__((packed));

_Static_assert(sizeof(struct access) == ACCESS_SIZE, "access layout");

static int valid_count(uint32_t count)
{
	return count == 1 || count == 2 || count == 4 || count == 8;
}

static uint64_t get_value(const unsigned char *p, uint32_t count)
{
	uint64_t value = 0;

	memcpy(&value, p, count);	/* little-endian host */
	return value;
}

/* ------------------------------------------------------------------ the server side */

typedef struct {
	PyObject_HEAD
	int fd;
	Py_buffer buf;		/* the connection's receive buffer */
	Py_buffer reply;	/* its reply buffer (>= ACCESS_SIZE + 8 bytes) */
	PyObject *read;		/* device.read(region, offset, count) -> int */
	PyObject *write;	/* device.write(region, offset, count, value) */
	uint64_t readable;	/* bit r: region r has the READ flag */
	uint64_t writable;	/* bit r: region r has the WRITE flag */
	PyObject *refused;	/* the exception class that means "not answered here" */
	Py_ssize_t anc_size;	/* room for the ancillary data of one receive */
	PyObject *conn;		/* the ClientConnection: .closed, ._fast_ready, ._out */
	PyObject *lock;		/* the reactor's lock (blocking serve only) */
	PyObject *due_timers;	/* reactor.run_due_timers (blocking serve only) */
	unsigned long long answered;	/* accesses answered here (tests, status) */
	PyObject *pending;	/* what poll() got for Python: a result, or an exception */
	int detached;		/* the connection closed: fd is no longer ours (detach()) */
} Server;

/* Room for the ancillary data of one receive (SCM_MAX_FD descriptors). */
union control {
	char buf[CMSG_SPACE(sizeof(int) * 253)];
	struct cmsghdr align;
};

static PyObject *str_closed, *str_fast_ready, *str_out, *str_acquire, *str_release;

/* The Server refers to its connection, which refers to it: the cycle collector sees both. */
static int Server_traverse(Server *self, visitproc visit, void *arg)
{
	Py_VISIT(self->buf.obj);
	Py_VISIT(self->reply.obj);
	Py_VISIT(self->read);
	Py_VISIT(self->write);
	Py_VISIT(self->refused);
	Py_VISIT(self->conn);
	Py_VISIT(self->lock);
	Py_VISIT(self->due_timers);
	Py_VISIT(self->pending);
	return 0;
}

static int Server_clear(Server *self)
{
	Py_CLEAR(self->read);
	Py_CLEAR(self->write);
	Py_CLEAR(self->refused);
	Py_CLEAR(self->conn);
	Py_CLEAR(self->lock);
	Py_CLEAR(self->due_timers);
	Py_CLEAR(self->pending);
	return 0;
}

static void Server_dealloc(Server *self)
{
	PyObject_GC_UnTrack(self);
	if (self->buf.obj)
		PyBuffer_Release(&self->buf);
	if (self->reply.obj)
		PyBuffer_Release(&self->reply);
	Py_XDECREF(self->read);
	Py_XDECREF(self->write);
	Py_XDECREF(self->refused);
	Py_XDECREF(self->conn);
	Py_XDECREF(self->lock);
	Py_XDECREF(self->due_timers);
	Py_XDECREF(self->pending);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Server_init(Server *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"fd", "buf", "reply", "read", "write", "readable",
				 "writable", "refused", "anc_size", "conn", "lock",
				 "due_timers", NULL};
	int fd;
	PyObject *buf, *reply, *read, *write, *refused, *conn, *lock, *due;
	unsigned long long readable, writable;
	Py_ssize_t anc_size;

	if (self->buf.obj) {
		PyErr_SetString(PyExc_RuntimeError, "Server already initialised");
		return -1;
	}
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOOOOKKOnOOO", kwlist, &fd, &buf,
					 &reply, &read, &write, &readable, &writable,
					 &refused, &anc_size, &conn, &lock, &due))
		return -1;
	if (fd < 0 || anc_size < 0 ||
	    anc_size > (Py_ssize_t)sizeof(((union control *)0)->buf)) {
		PyErr_SetString(PyExc_ValueError, "fd or anc_size out of range");
		return -1;
	}
	if (!PyCallable_Check(read) || !PyCallable_Check(write) || !PyCallable_Check(due)) {
		PyErr_SetString(PyExc_TypeError, "read, write and due_timers must be callable");
		return -1;
	}
	if (!PyType_Check(refused) ||
	    !PyType_IsSubtype((PyTypeObject *)refused, (PyTypeObject *)PyExc_Exception)) {
		PyErr_SetString(PyExc_TypeError, "refused must be an exception class");
		return -1;
	}
	if (PyObject_GetBuffer(buf, &self->buf, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
		return -1;
	if (PyObject_GetBuffer(reply, &self->reply, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
		PyBuffer_Release(&self->buf);
		return -1;
	}
	if (self->reply.len < ACCESS_SIZE + 8 || self->buf.len < ACCESS_SIZE) {
		PyBuffer_Release(&self->buf);
		PyBuffer_Release(&self->reply);
		PyErr_SetString(PyExc_ValueError, "buffers too small for one access");
		return -1;
	}
	self->fd = fd;
	self->readable = readable;
	self->writable = writable;
	self->anc_size = anc_size;
	Py_INCREF(read);
	self->read = read;
	Py_INCREF(write);
	self->write = write;
	Py_INCREF(refused);
	self->refused = refused;
	Py_INCREF(conn);
	self->conn = conn;
	Py_INCREF(lock);
	self->lock = lock;
	Py_INCREF(due);
	self->due_timers = due;
	return 0;
}

/* The ancillary data of one recvmsg as socket.recvmsg gives it: [(level, type, data)]. */
static PyObject *ancillary_list(struct msghdr *msg)
{
	PyObject *list = PyList_New(0);
	struct cmsghdr *cmsg;

	if (!list)
		return NULL;
	for (cmsg = CMSG_FIRSTHDR(msg); cmsg; cmsg = CMSG_NXTHDR(msg, cmsg)) {
		size_t len = cmsg->cmsg_len - CMSG_LEN(0);
		PyObject *item = Py_BuildValue("(iiy#)", cmsg->cmsg_level, cmsg->cmsg_type,
					       (const char *)CMSG_DATA(cmsg), (Py_ssize_t)len);

		if (!item || PyList_Append(list, item) < 0) {
			Py_XDECREF(item);
			Py_DECREF(list);
			return NULL;
		}
		Py_DECREF(item);
	}
	return list;
}

/*
 * Close the fds of SCM_RIGHTS items (a chunk dropped because the connection closed
 * meanwhile, or one whose list could not be built): never leak a passed fd.
 */
static void close_passed_fds(struct msghdr *msg)
{
	struct cmsghdr *cmsg;

	for (cmsg = CMSG_FIRSTHDR(msg); cmsg; cmsg = CMSG_NXTHDR(msg, cmsg)) {
		size_t i, n;
		int fd;

		if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
			continue;
		n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (i = 0; i < n; i++) {
			memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
			close(fd);
		}
	}
}

/* A Server made without __init__, or cleared by the cycle collector, serves nothing. */
static int usable(Server *self)
{
	if (self->conn && self->read && self->lock)
		return 1;
	PyErr_SetString(PyExc_ValueError, "Server not initialised (or already collected)");
	return 0;
}

static int truthy_attr(PyObject *obj, PyObject *name)
{
	PyObject *value = PyObject_GetAttr(obj, name);
	int res;

	if (!value)
		return -1;
	res = PyObject_IsTrue(value);
	Py_DECREF(value);
	return res;
}

/* True when the connection has replies queued (they go first: we may not send). */
static int has_queued(Server *self)
{
	PyObject *out = PyObject_GetAttr(self->conn, str_out);
	Py_ssize_t n;

	if (!out)
		return -1;
	n = PyObject_Length(out);
	Py_DECREF(out);
	return n < 0 ? -1 : n > 0;
}

/* Send the reply buffer's first len bytes; returns bytes sent, or -errno. */
static ssize_t send_reply(Server *self, size_t len)
{
	ssize_t sent;

	do {
		sent = send(self->fd, self->reply.buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
	} while (sent < 0 && errno == EINTR);
	return sent < 0 ? -errno : sent;
}

static void pack_reply(Server *self, const struct access *req, uint32_t size)
{
	struct access *rep = self->reply.buf;

	rep->msg_id = req->msg_id;
	rep->command = req->command;
	rep->size = size;
	rep->flags = TYPE_REPLY;
	rep->error = 0;
	rep->offset = req->offset;
	rep->region = req->region;
	rep->count = req->count;
}

/*
 * Answer the single accesses at buf[at:nbytes].  Returns DONE (as a new int) when it
 * answered them all, else the tuple that says where and why it stopped.  NULL only
 * for an error of the interpreter itself (memory).
 */
static PyObject *answer_chunk(Server *self, Py_ssize_t at, Py_ssize_t nbytes)
{
	unsigned char *buf = self->buf.buf;
	struct access copy;

	while (at < nbytes) {
		PyObject *args[4] = {NULL, NULL, NULL, NULL}, *result;
		const struct access *req = &copy;
		uint32_t size = ACCESS_SIZE, count;
		int posted = 0, write, queued;
		uint64_t value = 0;
		ssize_t sent;
		size_t len;

		if (nbytes - at < ACCESS_SIZE)
			break;
		/*
		 * The device is Python and may re-enter the connection (even receive into
		 * buf): the reply is built from the request as it was parsed, as in Python.
		 */
		memcpy(&copy, buf + at, sizeof(copy));
		count = req->count;
		if (!valid_count(count) || req->offset % count || req->region >= 64)
			break;
		if (req->command == CMD_REGION_READ) {
			if (req->flags || req->size != ACCESS_SIZE ||
			    !(self->readable >> req->region & 1))
				break;
			write = 0;
		} else if (req->command == CMD_REGION_WRITE) {
			size = ACCESS_SIZE + count;
			if (req->size != size || (req->flags && req->flags != FLAG_NO_REPLY) ||
			    nbytes - at < (Py_ssize_t)size ||
			    !(self->writable >> req->region & 1))
				break;
			posted = req->flags == FLAG_NO_REPLY;
			value = get_value(buf + at + ACCESS_SIZE, count);
			write = 1;
		} else {
			break;
		}
		args[0] = PyLong_FromUnsignedLong(req->region);
		args[1] = PyLong_FromUnsignedLongLong(req->offset);
		args[2] = PyLong_FromUnsignedLong(count);
		if (write)
			args[3] = PyLong_FromUnsignedLongLong(value);
		if (!args[0] || !args[1] || !args[2] || (write && !args[3])) {
			result = NULL;
		} else {
			result = PyObject_Vectorcall(write ? self->write : self->read, args,
						     write ? 4 : 3, NULL);
		}
		Py_XDECREF(args[0]);
		Py_XDECREF(args[1]);
		Py_XDECREF(args[2]);
		Py_XDECREF(args[3]);
		if (result && !write && !PyLong_Check(result)) {
			/* struct.pack, the Python path's, takes any __index__ */
			Py_SETREF(result, PyNumber_Index(result));
		}
		if (result && !write) {
			value = PyLong_AsUnsignedLongLong(result);
			if (value == (uint64_t)-1 && PyErr_Occurred()) {
				Py_CLEAR(result);
			} else if (count < 8 && value >> (8 * count)) {
				PyErr_Format(PyExc_ValueError,
					     "device read of %u bytes gave %#llx",
					     count, (unsigned long long)value);
				Py_CLEAR(result);
			}
		}
		if (!result) {
			PyObject *type, *exc, *tb;

			if (PyErr_ExceptionMatches(self->refused)) {
				/* refused before acting: the full codec answers it */
				PyErr_Clear();
				break;
			}
			if (!PyErr_ExceptionMatches(PyExc_Exception))
				return NULL;	/* KeyboardInterrupt, SystemExit: not ours */
			PyErr_Fetch(&type, &exc, &tb);
			PyErr_NormalizeException(&type, &exc, &tb);
			if (tb)
				PyException_SetTraceback(exc, tb);
			Py_XDECREF(type);
			Py_XDECREF(tb);
			return Py_BuildValue("(innNi)", FAILED, at, nbytes, exc, posted);
		}
		Py_DECREF(result);
		self->answered++;
		at += size;
		/*
		 * The device closed the connection (ClientConnection.close() detached us):
		 * the fd number may already name another file.  Python's fast path stops
		 * here too, sending nothing more and dropping the rest of the chunk.
		 */
		if (self->detached)
			return PyLong_FromLong(DONE);
		if (posted)
			continue;
		if (write) {
			pack_reply(self, req, ACCESS_SIZE);
			len = ACCESS_SIZE;
		} else {
			pack_reply(self, req, ACCESS_SIZE + count);
			memcpy((unsigned char *)self->reply.buf + ACCESS_SIZE, &value, count);
			len = ACCESS_SIZE + count;
		}
		queued = has_queued(self);
		if (queued < 0)
			return NULL;
		sent = queued ? 0 : send_reply(self, len);
		if (queued || sent != (ssize_t)len)
			return Py_BuildValue("(innnn)", UNSENT, at, nbytes, (Py_ssize_t)len,
					     (Py_ssize_t)(queued ? -EAGAIN : sent));
	}
	if (at == nbytes)
		return PyLong_FromLong(DONE);
	return Py_BuildValue("(innOi)", SLOW, at, nbytes, Py_None, 0);
}

static PyObject *Server_answer(Server *self, PyObject *const *args, Py_ssize_t nargs)
{
	Py_ssize_t at, nbytes;

	if (nargs != 2) {
		PyErr_SetString(PyExc_TypeError, "answer(at, nbytes)");
		return NULL;
	}
	if (!usable(self))
		return NULL;
	at = PyLong_AsSsize_t(args[0]);
	nbytes = PyLong_AsSsize_t(args[1]);
	if (PyErr_Occurred())
		return NULL;
	if (at < 0 || nbytes > self->buf.len || at > nbytes) {
		PyErr_SetString(PyExc_ValueError, "answer: range outside the buffer");
		return NULL;
	}
	if (self->detached)	/* closed: nothing more is answered, nothing sent */
		return PyLong_FromLong(DONE);
	return answer_chunk(self, at, nbytes);
}

/* One recvmsg into the buffer; *err is set (> 0) when it failed. */
static ssize_t receive(Server *self, struct msghdr *msg, struct iovec *iov, char *control,
		       int block, int *err)
{
	ssize_t n;

	iov->iov_base = self->buf.buf;
	iov->iov_len = self->buf.len;
	for (;;) {
		memset(msg, 0, sizeof(*msg));
		msg->msg_iov = iov;
		msg->msg_iovlen = 1;
		msg->msg_control = self->anc_size ? control : NULL;
		msg->msg_controllen = self->anc_size;
		if (block) {
			Py_BEGIN_ALLOW_THREADS
			n = recvmsg(self->fd, msg, MSG_CMSG_CLOEXEC);
			Py_END_ALLOW_THREADS
		} else {
			n = recvmsg(self->fd, msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		}
		if (n >= 0 || errno != EINTR) {
			*err = n < 0 ? errno : 0;
			/* Linux echoes the request flag back: only the kernel's own count */
			msg->msg_flags &= ~MSG_CMSG_CLOEXEC;
			return n;
		}
	}
}

/*
 * A chunk the fast loop does not take: hand it to Python with its ancillary data.
 * NULL (no memory): the caller closes the chunk's fds.
 */
static PyObject *slow_chunk(int code, ssize_t n, struct msghdr *msg)
{
	PyObject *anc = ancillary_list(msg);

	if (!anc)
		return NULL;
	return Py_BuildValue("(innNi)", code, (Py_ssize_t)0, (Py_ssize_t)n, anc,
			     msg->msg_flags);
}

static int call_method0(PyObject *obj, PyObject *name)
{
	PyObject *res = PyObject_CallMethodNoArgs(obj, name);

	if (!res)
		return -1;
	Py_DECREF(res);
	return 0;
}

/*
 * Receive one chunk without waiting and answer it: AGAIN when nothing was there, DONE
 * when the chunk was answered, else the tuple for Python.
 */
static PyObject *serve_ready(Server *self)
{
	union control control;
	struct msghdr msg;
	struct iovec iov;
	PyObject *res;
	int err, fast;
	ssize_t n;

	if (self->detached)
		return PyLong_FromLong(AGAIN);	/* its fd is not ours any more */
	n = receive(self, &msg, &iov, control.buf, 0, &err);
	if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK))
		return PyLong_FromLong(AGAIN);
	if (n < 0)
		return Py_BuildValue("(ii)", RECV_FAILED, err);
	fast = truthy_attr(self->conn, str_fast_ready);
	if (fast < 0) {
		close_passed_fds(&msg);
		return NULL;
	}
	if (!fast || n < ACCESS_SIZE || msg.msg_controllen || msg.msg_flags) {
		res = slow_chunk(SLOW, n, &msg);
		if (!res)
			close_passed_fds(&msg);
		return res;
	}
	return answer_chunk(self, 0, n);
}

/* Let the reactor's lock go while an exception is set, keeping that exception. */
static void release_raising(Server *self)
{
	PyObject *type, *exc, *tb;

	PyErr_Fetch(&type, &exc, &tb);
	if (call_method0(self->lock, str_release) < 0)
		PyErr_Clear();
	PyErr_Restore(type, exc, tb);
}

/* What serve(True) returns for a connection closed while it was served: no chunk. */
static PyObject *closed_result(void)
{
	return Py_BuildValue("(innNi)", CLOSED, (Py_ssize_t)0, (Py_ssize_t)0, PyList_New(0),
			     0);
}

/*
 * The blocking loop of a thread of the connection's own: receives with the GIL let go,
 * and handles each chunk holding the reactor's lock, after the timers that are due (as
 * the loop would run them before this request).  It returns only for something Python
 * must do, and then *with the lock held*: the caller handles the tuple and releases it.
 * When it raises, it has released the lock.
 */
static PyObject *serve_blocking(Server *self)
{
	union control control;
	struct msghdr msg;
	struct iovec iov;
	int err, fast, closed;
	PyObject *res;
	ssize_t n;

	for (;;) {
		if (self->detached) {	/* closed: never receive on an fd that is not ours */
			if (call_method0(self->lock, str_acquire) < 0)
				return NULL;
			res = closed_result();
			if (!res)
				release_raising(self);
			return res;
		}
		n = receive(self, &msg, &iov, control.buf, 1, &err);
		if (call_method0(self->lock, str_acquire) < 0) {
			if (n > 0)
				close_passed_fds(&msg);
			return NULL;
		}
		if (n < 0)
			return Py_BuildValue("(ii)", RECV_FAILED, err);
		res = PyObject_CallNoArgs(self->due_timers);
		if (!res)
			goto raise;
		Py_DECREF(res);
		closed = truthy_attr(self->conn, str_closed);
		if (closed < 0)
			goto raise;
		if (closed) {	/* closed by the loop or a timer meanwhile: Python decides */
			res = slow_chunk(CLOSED, n, &msg);
			if (!res)
				goto raise;
			return res;
		}
		fast = truthy_attr(self->conn, str_fast_ready);
		if (fast < 0)
			goto raise;
		if (!fast || n < ACCESS_SIZE || msg.msg_controllen || msg.msg_flags) {
			res = slow_chunk(SLOW, n, &msg);
			if (!res)
				goto raise;
			return res;	/* the lock stays held for the caller, as documented */
		}
		res = answer_chunk(self, 0, n);
		if (!res)
			goto raise;	/* no fds came with a chunk answered here */
		if (!PyLong_CheckExact(res))
			return res;	/* the lock stays held for the caller, as documented */
		Py_DECREF(res);
		if (self->detached) {	/* a device call closed it: Python lets the thread go */
			res = closed_result();
			if (!res)
				goto raise;
			return res;
		}
		if (call_method0(self->lock, str_release) < 0)
			return NULL;
	}
raise:
	close_passed_fds(&msg);
	release_raising(self);
	return NULL;
}

/*
 * serve(block) - receive and answer: serve_ready() for the loop (block false), the
 * blocking loop for a thread of the connection's own (block true).
 */
static PyObject *Server_serve(Server *self, PyObject *const *args, Py_ssize_t nargs)
{
	int block;

	if (nargs != 1) {
		PyErr_SetString(PyExc_TypeError, "serve(block)");
		return NULL;
	}
	block = PyObject_IsTrue(args[0]);
	if (block < 0 || !usable(self))
		return NULL;
	return block ? serve_blocking(self) : serve_ready(self);
}

/*
 * take() - for the connection's reader callback: what poll() kept for Python (raised
 * again when it was an exception), else serve(False) now.
 */
static PyObject *Server_take(Server *self, PyObject *unused)
{
	PyObject *pending = self->pending;

	if (!pending)
		return usable(self) ? serve_ready(self) : NULL;
	self->pending = NULL;
	if (PyExceptionInstance_Check(pending)) {
		PyErr_SetObject((PyObject *)Py_TYPE(pending), pending);
		Py_DECREF(pending);
		return NULL;
	}
	return pending;
}

/*
 * detach() - the connection is closing: never touch the fd again (its number may soon
 * name another file), and hand back what poll() kept for Python (None if nothing), so
 * that the caller closes the fds a kept chunk carries.
 */
static PyObject *Server_detach(Server *self, PyObject *unused)
{
	PyObject *pending = self->pending;

	self->detached = 1;
	self->pending = NULL;
	if (!pending)
		Py_RETURN_NONE;
	return pending;
}

static PyObject *Server_get_answered(Server *self, void *closure)
{
	return PyLong_FromUnsignedLongLong(self->answered);
}

static PyMethodDef Server_methods[] = {
	{"serve", (PyCFunction)(void (*)(void))Server_serve, METH_FASTCALL,
	 "serve(block) -> DONE | AGAIN | tuple: receive one chunk and answer it."},
	{"take", (PyCFunction)Server_take, METH_NOARGS,
	 "take() -> what poll() kept for Python, or serve(False)."},
	{"answer", (PyCFunction)(void (*)(void))Server_answer, METH_FASTCALL,
	 "answer(at, nbytes) -> DONE | tuple: answer the accesses at buf[at:nbytes]."},
	{"detach", (PyCFunction)Server_detach, METH_NOARGS,
	 "detach() -> what poll() kept, or None: the connection closed, the fd is not ours."},
	{NULL}
};

static PyGetSetDef Server_getset[] = {
	{"answered", (getter)Server_get_answered, NULL,
	 "accesses this object answered", NULL},
	{NULL}
};

static PyTypeObject ServerType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "platpass.vfio_user._native.Server",
	.tp_basicsize = sizeof(Server),
	.tp_dealloc = (destructor)Server_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "The fast path of one vfio-user client connection (see the module).",
	.tp_traverse = (traverseproc)Server_traverse,
	.tp_clear = (inquiry)Server_clear,
	.tp_methods = Server_methods,
	.tp_getset = Server_getset,
	.tp_init = (initproc)Server_init,
	.tp_new = PyType_GenericNew,
};

/*
 * One epoll_wait of at most ms milliseconds (GIL let go), then every ready fd whose
 * entry in ``fast`` is a Server is served here (holding ``lock`` unless it is None);
 * the other ready fds - and each Server's that got something for Python, which it keeps
 * for its take() - are appended to ``ready``.  Returns 0, 1 when the wait was
 * interrupted by a signal (its handlers have run), -1 on error.
 */
static int poll_once(int epfd, int ms, PyObject *fast, PyObject *lock, PyObject *ready)
{
	struct epoll_event events[64];
	int n, i, locked = 0, rc = 0;

	Py_BEGIN_ALLOW_THREADS
	n = epoll_wait(epfd, events, 64, ms);
	Py_END_ALLOW_THREADS
	if (n < 0) {
		if (errno != EINTR) {
			PyErr_SetFromErrno(PyExc_OSError);
			return -1;
		}
		return PyErr_CheckSignals() < 0 ? -1 : 1;
	}
	for (i = 0; i < n && rc == 0; i++) {
		PyObject *key = PyLong_FromLong(events[i].data.fd), *entry, *res;
		Server *server;

		if (!key) {
			rc = -1;
			break;
		}
		entry = PyDict_GetItemWithError(fast, key);
		if (!entry && PyErr_Occurred()) {
			Py_DECREF(key);
			rc = -1;
			break;
		}
		if (entry && Py_IS_TYPE(entry, &ServerType) &&
		    !((Server *)entry)->pending && ((Server *)entry)->conn &&
		    !((Server *)entry)->detached) {
			server = (Server *)entry;
			Py_INCREF(server);
			if (lock != Py_None && !locked) {
				if (call_method0(lock, str_acquire) < 0) {
					Py_DECREF(server);
					Py_DECREF(key);
					rc = -1;
					break;
				}
				locked = 1;
			}
			res = serve_ready(server);
			if (res && PyLong_CheckExact(res)) {	/* DONE or AGAIN */
				Py_DECREF(res);
				Py_DECREF(server);
				Py_DECREF(key);
				continue;
			}
			if (!res) {	/* its callback raises it, in the reader's context */
				PyObject *type, *exc, *tb;

				PyErr_Fetch(&type, &exc, &tb);
				PyErr_NormalizeException(&type, &exc, &tb);
				if (tb && exc)
					PyException_SetTraceback(exc, tb);
				Py_XDECREF(type);
				Py_XDECREF(tb);
				res = exc;
			}
			server->pending = res;
			Py_DECREF(server);
		}
		if (PyList_Append(ready, key) < 0)
			rc = -1;
		Py_DECREF(key);
	}
	if (locked) {
		PyObject *type, *exc, *tb;

		PyErr_Fetch(&type, &exc, &tb);
		if (call_method0(lock, str_release) < 0) {
			if (type)
				PyErr_Clear();
			else
				rc = -1;
		}
		if (type)
			PyErr_Restore(type, exc, tb);
	}
	return rc;
}

static double monotonic(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * poll(epfd, timeout, fast, lock, timers=None) -> [fd, ...]
 *
 * The reactor's wait (platpass.reactor.EpollReactor), for a loop that serves vfio-user
 * clients: waits as epoll_wait does (timeout in seconds, negative: none), serving the
 * ready fds it knows (poll_once), and returns the ready fds whose reader callbacks must
 * run.  While everything that became ready was served here, it waits again instead of
 * returning - until the timeout has passed, or ``timers`` (the reactor's timer heap)
 * changed, as a device may schedule a timer while it is served; the reactor then
 * recomputes its wait.  A timeout of 0 polls once.  A signal returns [] (its handlers
 * have run: the reactor's stop is one).
 */
static PyObject *fast_poll(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *fast, *lock, *timers = Py_None, *ready, *first = NULL;
	Py_ssize_t count = 0;
	double timeout, deadline = 0;
	int epfd, ms, rc;

	if ((nargs != 4 && nargs != 5) || !PyDict_Check(args[2])) {
		PyErr_SetString(PyExc_TypeError,
				"poll(epfd, timeout, fast: dict, lock, timers: list | None)");
		return NULL;
	}
	epfd = (int)PyLong_AsLong(args[0]);
	timeout = PyFloat_AsDouble(args[1]);
	if (PyErr_Occurred())
		return NULL;
	fast = args[2];
	lock = args[3];
	if (nargs == 5)
		timers = args[4];
	if (timers != Py_None) {
		if (!PyList_Check(timers)) {
			PyErr_SetString(PyExc_TypeError, "poll: timers must be a list or None");
			return NULL;
		}
		count = PyList_GET_SIZE(timers);
		first = count ? PyList_GET_ITEM(timers, 0) : NULL;	/* compared, not used */
	}
	if (timeout >= 0)
		deadline = monotonic() + timeout;
	ready = PyList_New(0);
	if (!ready)
		return NULL;
	for (;;) {
		if (timeout < 0) {
			ms = -1;
		} else {
			double left = deadline - monotonic();

			if (left <= 0)
				ms = 0;
			else if (left * 1000.0 >= (double)INT_MAX)
				ms = INT_MAX;
			else
				ms = (int)ceil(left * 1000.0);
		}
		rc = poll_once(epfd, ms, fast, lock, ready);
		if (rc < 0) {
			Py_DECREF(ready);
			return NULL;
		}
		if (rc > 0 || PyList_GET_SIZE(ready) || ms == 0 || timers == Py_None)
			break;
		if (PyList_GET_SIZE(timers) != count ||
		    (count && PyList_GET_ITEM(timers, 0) != first))
			break;	/* a device scheduled (or ran) a timer: the reactor re-plans */
	}
	return ready;
}

/* ------------------------------------------------------------------ the client side */

/*
 * An int that fits the field, for PyArg's "O&": the "I" and "K" formats wrap what does
 * not fit (2**64 + 0x48 would become 0x48, -4 a huge offset), where the Python path's
 * struct.pack refuses it.  A field that does not fit is an error, and nothing is sent.
 */
static int to_field(PyObject *obj, unsigned long long *out, unsigned long long max)
{
	unsigned long long value;

	if (!PyLong_Check(obj)) {
		PyErr_Format(PyExc_TypeError, "roundtrip: %.50s is not an int",
			     Py_TYPE(obj)->tp_name);
		return 0;
	}
	value = PyLong_AsUnsignedLongLong(obj);	/* OverflowError: negative or too big */
	if (value == (unsigned long long)-1 && PyErr_Occurred())
		return 0;
	if (value > max) {
		PyErr_SetString(PyExc_OverflowError, "roundtrip: field out of range");
		return 0;
	}
	*out = value;
	return 1;
}

static int to_u64(PyObject *obj, void *out)
{
	return to_field(obj, out, UINT64_MAX);
}

static int to_u32(PyObject *obj, void *out)
{
	return to_field(obj, out, UINT32_MAX);
}

static int to_u16(PyObject *obj, void *out)
{
	return to_field(obj, out, UINT16_MAX);
}

/*
 * roundtrip(fd, msg_id, region, offset, count, value=None, posted=False) -> int | None
 *
 * One access: a REGION_READ (value None) or a REGION_WRITE, sent whole; for anything
 * but a posted write, the reply is awaited with the GIL let go.  Returns the value read
 * (0 for a write, None for a posted write) when the reply is exactly that access's
 * successful reply.  Raises OSError when the socket fails (its timeouts included).
 * Anything else - an error reply, another message, a reply in pieces, the end of the
 * stream - returns the bytes of the one receive (at most 40; none when the peer closed),
 * which the caller's full codec takes and completes from the socket.
 */
static PyObject *roundtrip(PyObject *module, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"fd", "msg_id", "region", "offset", "count", "value",
				 "posted", NULL};
	unsigned char out[ACCESS_SIZE + 8], in[ACCESS_SIZE + 8];
	struct access *req = (struct access *)out;
	const struct access *rep = (const struct access *)in;
	unsigned long long offset, msg_id, region, count, value = 0;
	PyObject *value_obj = Py_None;
	ssize_t n, got, len;
	int fd, posted = 0;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO&O&O&O&|Op", kwlist, &fd, to_u16,
					 &msg_id, to_u32, &region, to_u64, &offset, to_u32,
					 &count, &value_obj, &posted))
		return NULL;
	if (!valid_count(count) || offset % count) {
		PyErr_SetString(PyExc_ValueError, "roundtrip: not one aligned access");
		return NULL;
	}
	if (value_obj != Py_None) {
		value = PyLong_AsUnsignedLongLong(value_obj);
		if (value == (unsigned long long)-1 && PyErr_Occurred())
			return NULL;
		if (count < 8 && value >> (8 * count)) {
			PyErr_SetString(PyExc_ValueError, "roundtrip: value wider than count");
			return NULL;
		}
	} else if (posted) {
		PyErr_SetString(PyExc_ValueError, "roundtrip: only a write can be posted");
		return NULL;
	}
	memset(out, 0, sizeof(out));
	req->msg_id = msg_id;
	req->offset = offset;
	req->region = region;
	req->count = count;
	if (value_obj == Py_None) {
		req->command = CMD_REGION_READ;
		len = ACCESS_SIZE;
	} else {
		req->command = CMD_REGION_WRITE;
		req->flags = posted ? FLAG_NO_REPLY : 0;
		memcpy(out + ACCESS_SIZE, &value, count);
		len = ACCESS_SIZE + count;
	}
	req->size = len;
	got = 0;
	do {
		n = send(fd, out, len, MSG_DONTWAIT | MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
		return PyErr_SetFromErrno(PyExc_OSError);
	if (n != len) {
		/* The socket is full: finish the message blocking (its send timeout holds). */
		got = n < 0 ? 0 : n;
		while (got < len) {
			Py_BEGIN_ALLOW_THREADS
			n = send(fd, out + got, len - got, MSG_NOSIGNAL);
			Py_END_ALLOW_THREADS
			if (n >= 0) {
				got += n;
				continue;
			}
			if (errno != EINTR)
				return PyErr_SetFromErrno(PyExc_OSError);
			if (PyErr_CheckSignals() < 0)	/* as socket.sendall: Ctrl-C */
				return NULL;
		}
	}
	if (posted)
		Py_RETURN_NONE;
	/*
	 * The reply, in one receive of at most the longest successful reply (as the Python
	 * client's one recv_into): a reply that is anything but exactly that access's
	 * successful reply, or that came in pieces, goes to the caller's codec as it is.
	 */
	for (;;) {
		Py_BEGIN_ALLOW_THREADS
		n = recv(fd, in, sizeof(in), 0);
		Py_END_ALLOW_THREADS
		if (n >= 0)
			break;
		if (errno != EINTR)
			return PyErr_SetFromErrno(PyExc_OSError);
		/*
		 * A signal's handler runs now, as socket.recv_into runs it (the Python
		 * path's): a KeyboardInterrupt while the server is slow is raised at once,
		 * not after the receive timeout as a lost connection.
		 */
		if (PyErr_CheckSignals() < 0)
			return NULL;
	}
	got = n;
	if (got < ACCESS_SIZE || rep->size != got)
		return PyBytes_FromStringAndSize((const char *)in, got);
	/*
	 * The fields the Python codec's fast path checks (region_access's read_reply_value
	 * and is_write_reply), no more: a write's reply is not held to its count.
	 */
	if (rep->msg_id == msg_id && rep->command == req->command &&
	    rep->flags == TYPE_REPLY) {
		if (req->command == CMD_REGION_READ && rep->count == count &&
		    rep->size == ACCESS_SIZE + count)
			return PyLong_FromUnsignedLongLong(get_value(in + ACCESS_SIZE, count));
		if (req->command == CMD_REGION_WRITE && rep->size == ACCESS_SIZE)
			return PyLong_FromLong(0);
	}
	/* Anything else: its bytes read so far (header, and the body when it fit). */
	return PyBytes_FromStringAndSize((const char *)in, got);
}

static PyMethodDef module_methods[] = {
	{"poll", (PyCFunction)(void (*)(void))fast_poll, METH_FASTCALL,
	 "poll(epfd, timeout, fast, lock, timers=None) -> ready fds: the reactor's wait."},
	{"roundtrip", (PyCFunction)(void (*)(void))roundtrip, METH_VARARGS | METH_KEYWORDS,
	 "One single-access REGION_READ/REGION_WRITE and its reply (see the source)."},
	{NULL}
};

static struct PyModuleDef native_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "platpass.vfio_user._native",
	.m_doc = "The trapped-register round trip of vfio-user in C (optional accelerator).",
	.m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
	PyObject *m;

	str_closed = PyUnicode_InternFromString("closed");
	str_fast_ready = PyUnicode_InternFromString("_fast_ready");
	str_out = PyUnicode_InternFromString("_out");
	str_acquire = PyUnicode_InternFromString("acquire");
	str_release = PyUnicode_InternFromString("release");
	if (!str_closed || !str_fast_ready || !str_out || !str_acquire || !str_release)
		return NULL;
	if (PyType_Ready(&ServerType) < 0)
		return NULL;
	m = PyModule_Create(&native_module);
	if (!m)
		return NULL;
	if (PyModule_AddIntConstant(m, "ABI", ABI_VERSION) < 0 ||
	    PyModule_AddIntConstant(m, "DONE", DONE) < 0 ||
	    PyModule_AddIntConstant(m, "AGAIN", AGAIN) < 0 ||
	    PyModule_AddIntConstant(m, "SLOW", SLOW) < 0 ||
	    PyModule_AddIntConstant(m, "FAILED", FAILED) < 0 ||
	    PyModule_AddIntConstant(m, "UNSENT", UNSENT) < 0 ||
	    PyModule_AddIntConstant(m, "RECV_FAILED", RECV_FAILED) < 0 ||
	    PyModule_AddIntConstant(m, "CLOSED", CLOSED) < 0 ||
	    PyModule_AddIntConstant(m, "ACCESS_SIZE", ACCESS_SIZE) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	Py_INCREF(&ServerType);
	if (PyModule_AddObject(m, "Server", (PyObject *)&ServerType) < 0) {
		Py_DECREF(&ServerType);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
